"""The ``funcmod`` command line and the tools behind it: ``cli`` (the entry point), one module
per subcommand (``compare``, ``show``, ``trajectory``, ``distributed``, ``digits``, ``bench``),
the data-parallel harness (``data_parallel``), its PyTorch DDP twin (``ddp``) and the argument
types the subcommands share (``args``).

Tools use the library and the seed examples; neither of those imports a tool.
"""
