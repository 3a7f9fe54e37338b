"""The ``funcmod`` command line and the tools behind it: ``cli`` (the entry point), one module
per subcommand (``compare``, ``show``, ``trajectory``, ``distributed``, ``digits``, ``bench``,
``charts``, ``gallery``, ``port``), the data-parallel harness (``data_parallel``), its PyTorch
DDP twin (``ddp``), the argument types the subcommands share (``args``) and the documentation site's
build hook (``docsite``).

Tools use the library and the examples (articles, corpus); none of those imports a tool.
"""
