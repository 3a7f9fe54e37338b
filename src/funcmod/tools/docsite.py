"""The documentation site's build hook (``hooks:`` in ``mkdocs.yml``): the pages that show code
and measured numbers are generated at build time from the package and from the tools' JSON, so
nothing on them is typed in or copied.

* ``examples/index.md`` and ``examples/<Name>.md`` for every entry of
  ``funcmod.articles.EXAMPLES``: the PyTorch twin, the Linen port and the NNX port (their source,
  as tabs) and the parity table of every leaf in float32 and float64, from ``compare.json``;
* ``results.md``: the parity, bench and digits charts (``funcmod.tools.charts``) and the bench
  table (the bench's own markdown);
* ``gallery.md``: every model of ``funcmod.corpus`` as its PyTorch classes and the Flax source
  ``funcmod.port`` generated for it (``docs/gallery/<name>.py``, written by ``funcmod
  gallery``), side by side as tabs.

The JSON is read from ``$FUNCMOD_RESULTS`` or else ``results/`` beside ``mkdocs.yml`` (``make
docs`` runs ``funcmod compare --json`` into it first). A file that is not there gives a visible
note on its page naming the command that writes it; the build does not run the slow tools
itself.
"""

from __future__ import annotations

import datetime
import inspect
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from funcmod.articles import EXAMPLES, models, nnx_models
from funcmod.tools.charts import CHARTS, load_results, write_charts

__all__ = [
    "RESULTS_ENV",
    "example_page",
    "examples_index",
    "gallery_page",
    "generated_pages",
    "on_files",
    "on_post_build",
]

RESULTS_ENV = "FUNCMOD_RESULTS"
_TEMP: list[str] = []  # the charts' folder of the build in progress, removed after it


def _results_dir(config: Any) -> Path:
    given = os.environ.get(RESULTS_ENV)
    return Path(given) if given else Path(config.config_file_path).parent / "results"


def _measured(path: Path, command: str) -> str:
    when = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.UTC)
    return f"Measured by `{command}` ({path.name}, written {when:%Y-%m-%d %H:%M} UTC)."


def _missing(what: str, command: str) -> str:
    return (
        f'!!! warning "Not measured in this build"\n\n    No {what} in the results folder: run '
        f"`{command}`, then build again (`make docs`).\n"
    )


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line if line else line for line in text.splitlines())


def _tabs(sources: dict[str, str]) -> str:
    out = []
    for title, source in sources.items():
        out += [f'=== "{title}"', "", _indent(f"```python\n{source.rstrip()}\n```"), ""]
    return "\n".join(out)


def _sci(x: float) -> str:
    return "0" if x == 0 else f"{x:.1e}"


def example_page(name: str, row: dict[str, Any] | None, measured: str) -> str:
    """The page of one example: its sources as tabs and, when ``row`` (its entry of
    ``funcmod compare --json``) is given, its parity table."""
    from funcmod.articles import torch_models

    ex = EXAMPLES[name]
    port = getattr(models, name)
    lines = [
        f"# {name}",
        "",
        f"From the article *{ex.article}*. Constructor arguments: `{dict(ex.kwargs)}`; inputs "
        f"(PyTorch layout, batch of one): `{ex.input_shapes}`.",
        "",
        inspect.getdoc(port) or "",
        "",
        _tabs(
            {
                "PyTorch twin": inspect.getsource(getattr(torch_models, name)),
                "Flax Linen port": inspect.getsource(port),
                "Flax NNX port": inspect.getsource(getattr(nnx_models, name)),
            }
        ),
        "## Parity",
        "",
    ]
    if row is None:
        lines.append(_missing(f"compare.json entry for {name}", "funcmod compare --json"))
        return "\n".join(lines) + "\n"
    dtypes = list(row["parity"])
    lines += [
        f"{measured} Outputs and gradients of `sum(output * cotangent)` with respect to every "
        "input and parameter, the twin's weights converted to the port; max relative error "
        "`max|flax - torch| / max|torch|` per leaf. Targets: "
        + ", ".join(f"{dt} <= {row['parity'][dt]['rtol']:g}" for dt in dtypes)
        + f". Parameters: {row['params_flax']} (torch {row['params_torch']}). "
        + ("All within target." if row["ok"] else "**Not all within target.**"),
        "",
    ]
    head = ["leaf", "shape"] + [f"{dt} {k}" for dt in dtypes for k in ("max abs", "max rel")]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    leaves: dict[str, dict[str, Any]] = {}
    for dt in dtypes:
        for leaf in row["parity"][dt]["leaves"]:
            leaves.setdefault(leaf["path"], {"shape": leaf["shape"]})[dt] = leaf
    for path, by_dtype in leaves.items():
        cells = [f"`{path}`", f"{tuple(by_dtype['shape'])}"]
        for dt in dtypes:
            leaf = by_dtype.get(dt)
            cells += ["-", "-"] if leaf is None else [_sci(leaf["max_abs"]), _sci(leaf["max_rel"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def examples_index(compare: dict[str, Any] | None, measured: str, chart: bool) -> str:
    """The examples' overview: one row per example, the parity chart."""
    lines = [
        "# The ten examples",
        "",
        "Every example of the four seed articles, ported to Flax Linen "
        "(`funcmod.articles.models`) and Flax NNX (`funcmod.articles.nnx_models`), next to a "
        "PyTorch twin with the same names (`funcmod.articles.torch_models`). Each page shows "
        "the three sources and the parity of every leaf.",
        "",
    ]
    rows = {r["example"]: r for r in compare["examples"]} if compare else {}
    if not rows:
        lines.append(_missing("compare.json", "funcmod compare --json > results/compare.json"))
    else:
        dtypes = list(next(iter(rows.values()))["parity"])
        lines += [measured, ""]
        head = ["example", "parameters"]
        head += [f"{k} {dt.replace('float', 'f')}" for dt in dtypes for k in ("fwd", "grad")]
        lines += ["| " + " | ".join([*head, "result"]) + " |", "|" + "---|" * (len(head) + 1)]
        for name in EXAMPLES:
            row = rows.get(name)
            if row is None:
                lines.append(f"| [{name}]({name}.md) | not measured |" + " |" * len(head))
                continue
            cells = [f"[{name}]({name}.md)", str(row["params_flax"])]
            for dt in dtypes:
                p = row["parity"][dt]
                cells += [_sci(p["forward_max_rel"]), _sci(p["grad_max_rel"])]
            lines.append("| " + " | ".join([*cells, "pass" if row["ok"] else "**FAIL**"]) + " |")
    if chart:
        lines += ["", "![max relative error per example and dtype](../charts/parity.png)"]
    return "\n".join(lines) + "\n"


def _results_page(found: dict[str, Any], results: Path, charts: dict[str, Path | None]) -> str:
    from funcmod.tools.bench.report import render_markdown

    lines = [
        "# Measured results",
        "",
        "Drawn at build time from the JSON the tools write (`funcmod charts` draws the same "
        f"PNGs from a results folder); read from `{results.name}/` for this build.",
        "",
        "## Parity of the examples",
        "",
    ]
    if charts["parity"]:
        lines += [
            _measured(results / "compare.json", "funcmod compare --json"),
            "",
            "![max relative error per example and dtype](charts/parity.png)",
            "",
            "Per-leaf numbers: [the examples](examples/index.md).",
        ]
    else:
        lines.append(_missing("compare.json", "funcmod compare --json > results/compare.json"))
    lines += ["", "## Speed", ""]
    if charts["bench"]:
        lines += [
            _measured(results / "bench.json", "funcmod bench --out results"),
            "",
            "![torch time over Flax time per case](charts/bench.png)",
            "",
            render_markdown(found["bench.json"]),
        ]
    else:
        lines.append(_missing("bench.json", "make bench"))
    lines += ["", "## Training on the digits", ""]
    if charts["digits"]:
        lines += ["| model | steps | torch accuracy | Flax accuracy | final parameter max rel |"]
        lines += ["|---|---|---|---|---|"]
        for model in ("mlp", "cnn"):
            run = found.get(f"digits_{model}.json")
            if run is not None:
                lines.append(
                    f"| {model} | {run['steps']} | {run['torch_accuracy']:.4f} | "
                    f"{run['flax_accuracy']:.4f} | {_sci(run['final_param_max_rel'])} |"
                )
        name = next(n for n in CHARTS["digits"] if n in found)
        lines += [
            "",
            _measured(results / name, "funcmod digits mlp|cnn --workdir results"),
            "",
            "![loss per step, PyTorch and Flax](charts/digits.png)",
        ]
    else:
        lines.append(_missing("digits_mlp.json", "funcmod digits mlp --workdir results"))
    return "\n".join(lines) + "\n"


def gallery_page(gallery: Path) -> str:
    """The port gallery: per corpus model, the torch classes it is built from (in the order the
    model first uses them) and the generated Flax source kept in ``gallery/<name>.py``."""
    from funcmod.corpus import CORPUS

    lines = [
        "# Port gallery",
        "",
        "Every model of the porter's corpus (`funcmod.corpus`, plain PyTorch written the way its "
        "usual sources write it) next to the Flax Linen source `funcmod.port` generates for it. "
        "The Flax tab is the file `docs/gallery/<name>.py` that `funcmod gallery` writes and "
        "`funcmod gallery --check` compares with what the porter generates now; how to port "
        "your own model: [Porting your model](port.md).",
        "",
    ]
    for name, entry in CORPUS.items():
        model = entry.build()
        classes = list(
            dict.fromkeys(
                type(m) for m in model.modules() if type(m).__module__.startswith("funcmod.")
            )
        )
        torch_source = "\n\n".join(inspect.getsource(cls).rstrip() for cls in classes)
        path = gallery / f"{name}.py"
        lines += [f"## {name}", ""]
        if not path.is_file():
            lines.append(_missing(f"gallery/{name}.py", f"funcmod gallery {name}"))
            continue
        flax_source = path.read_text(encoding="utf-8")
        lines.append(
            _tabs({"PyTorch (funcmod.corpus)": torch_source, "Flax (funcmod.port)": flax_source})
        )
    return "\n".join(lines) + "\n"


def generated_pages() -> list[str]:
    """The pages this hook adds to the site, as paths under ``docs/`` (for link checks)."""
    pages = ["examples/index.md", "results.md", "gallery.md"]
    return pages + [f"examples/{name}.md" for name in EXAMPLES]


def on_files(files: Any, config: Any) -> Any:
    """mkdocs hook: add the generated pages and charts to the site's files."""
    from mkdocs.structure.files import File

    results = _results_dir(config)
    found = load_results(results) if results.is_dir() else {}
    tmp = tempfile.mkdtemp(prefix="funcmod-charts-")
    _TEMP.append(tmp)
    charts = write_charts(results, tmp) if found else dict.fromkeys(CHARTS)
    for name, path in charts.items():
        if path is not None:
            files.append(File.generated(config, f"charts/{name}.png", abs_src_path=str(path)))
    compare = found.get("compare.json")
    measured = _measured(results / "compare.json", "funcmod compare --json") if compare else ""
    rows = {r["example"]: r for r in compare["examples"]} if compare else {}
    pages = {
        "examples/index.md": examples_index(compare, measured, bool(charts["parity"])),
        "results.md": _results_page(found, results, charts),
        "gallery.md": gallery_page(Path(config.docs_dir) / "gallery"),
    }
    for name in EXAMPLES:
        pages[f"examples/{name}.md"] = example_page(name, rows.get(name), measured)
    assert list(pages) == generated_pages()
    for uri, content in pages.items():
        files.append(File.generated(config, uri, content=content))
    return files


def on_post_build(config: Any) -> None:
    """mkdocs hook: remove the charts' temporary folder."""
    while _TEMP:
        shutil.rmtree(_TEMP.pop(), ignore_errors=True)
