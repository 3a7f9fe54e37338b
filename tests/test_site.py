"""The documentation site: ``mkdocs build --strict`` succeeds (a broken link, a page missing from
the nav, a docstring that does not parse, all fail it), every public function and class has a
docstring that the API pages render, the generated pages carry numbers from a run, and the
built site fetches nothing from the network.

The build runs once per module, in a subprocess, as ``make docs`` runs it, against a results
folder holding what ``funcmod compare MLP --dtypes float32 --json`` printed here (one example,
so it stays quick; the other examples' pages then say that they were not measured).
"""

from __future__ import annotations

import contextlib
import html
import importlib
import inspect
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("torch")

from funcmod.articles import EXAMPLES
from funcmod.tools import charts, cli, docsite
from tests.helpers import shared_dir

ROOT = Path(__file__).resolve().parent.parent
API = ROOT / "docs" / "api"
# The public modules the API reference must cover (issue: the reference as a website).
REQUIRED_API = {
    "funcmod.convert",
    "funcmod.parity",
    "funcmod.trajectory",
    "funcmod.train",
    "funcmod.sharding",
    "funcmod.optim",
    "funcmod.checkpoint",
    "funcmod.nn",
    "funcmod.port",
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def api_modules() -> dict[str, str]:
    """``{module: API page}`` for every ``::: module`` directive under docs/api/."""
    out = {}
    for page in sorted(API.glob("*.md")):
        for line in page.read_text(encoding="utf-8").splitlines():
            m = re.match(r"^::: ([\w.]+)\s*$", line)
            if m:
                out[m.group(1)] = page.stem
    return out


def public_objects(module_name: str) -> list[tuple[str, object]]:
    """The functions and classes a module exports (``__all__``) and defines itself."""
    module = importlib.import_module(module_name)
    assert hasattr(module, "__all__"), f"{module_name} has no __all__"
    out = []
    for name in module.__all__:
        obj = getattr(module, name)
        callable_ = inspect.isfunction(obj) or inspect.isclass(obj) or hasattr(obj, "__wrapped__")
        if callable_ and getattr(obj, "__module__", None) == module_name:
            # an alias (TorchAdamState = TorchOptState) is documented under the class's name
            full = f"{module_name}.{obj.__name__}"
            if full not in dict(out):
                out.append((full, obj))
    return out


def _text(page_html: str) -> str:
    """A page's text: tags dropped, entities decoded, whitespace collapsed."""
    text = html.unescape(re.sub(r"<[^>]+>", " ", page_html))
    return re.sub(r"\s+", " ", text)


def _squeezed(page_html: str) -> str:
    """A page's text without whitespace and ``*`` (markup splits words differently, and an
    asterisk in a docstring may become emphasis)."""
    return re.sub(r"[\s*]+", "", html.unescape(re.sub(r"<[^>]+>", "", page_html)))


def _first_words(doc: str, n: int = 6) -> str:
    """The first ``n`` words of a docstring, squeezed as ``_squeezed`` squeezes the page."""
    words = re.sub(r"[`*]", "", doc.split("\n\n")[0]).split()
    return "".join(words[:n])


def _docstring(obj: object) -> str:
    """The object's own docstring; the signature that ``dataclasses`` (and so every Linen
    module) writes into a class without one does not count."""
    doc = inspect.getdoc(obj) or ""
    if inspect.isclass(obj) and doc.startswith(f"{obj.__name__}("):
        return ""
    return doc.strip()


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    from filelock import FileLock

    out = shared_dir(tmp_path_factory) / "site-results"
    with FileLock(str(out) + ".lock"):
        if not (out / "compare.json").is_file():
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                status = cli.main(["compare", "MLP", "--dtypes", "float32", "--json"])
            assert status == 0, buf.getvalue()
            out.mkdir(exist_ok=True)
            (out / "compare.json").write_text(buf.getvalue(), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory, results) -> Path:
    from filelock import FileLock

    site_dir = shared_dir(tmp_path_factory) / "site"
    with FileLock(str(site_dir) + ".lock"):
        if not (site_dir / "index.html").is_file():
            env = {**os.environ, docsite.RESULTS_ENV: str(results), "NO_MKDOCS_2_WARNING": "1"}
            cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)]
            done = subprocess.run(
                cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
            )
            assert done.returncode == 0, (
                f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
            )
    return site_dir


def test_every_public_function_and_class_has_a_docstring():
    modules = api_modules()
    assert set(modules) >= REQUIRED_API, f"no API page for {REQUIRED_API - set(modules)}"
    objects = [o for m in modules for o in public_objects(m)]
    assert len(objects) > 150, len(objects)  # the walk finds them (179 when written)
    missing = [name for name, obj in objects if not _docstring(obj)]
    assert not missing, f"public objects without a docstring: {missing}"


@pytest.mark.slow
def test_api_pages_render_every_docstring(site):
    pages = {
        p: (site / "api" / p / "index.html").read_text(encoding="utf-8")
        for p in set(api_modules().values()) - {"index"}
    }
    unrendered = []
    for module, page in api_modules().items():
        text = _squeezed(pages[page])
        for name, obj in public_objects(module):
            anchor = f'id="{name}"'
            if anchor not in pages[page] or _first_words(_docstring(obj)) not in text:
                unrendered.append(f"{name} (api/{page})")
    assert not unrendered, f"docstrings the API pages do not show: {unrendered}"


@pytest.mark.slow
def test_every_page_of_the_nav_is_built(site):
    import yaml

    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]

    def pages(entries):
        for e in entries:
            value = next(iter(e.values())) if isinstance(e, dict) else e
            yield from pages(value) if isinstance(value, list) else [value]

    listed = list(pages(nav))
    for page in listed:
        built = page[: -len("index.md")] if page.endswith("index.md") else page[:-3] + "/"
        assert (site / built / "index.html").is_file(), f"{page} was not built"
    assert {f"examples/{n}.md" for n in EXAMPLES} <= set(listed), "an example has no page"


@pytest.mark.slow
def test_example_pages_show_sources_and_measured_numbers(site, results):
    row = json.loads((results / "compare.json").read_text())["examples"][0]
    mlp = (site / "examples" / "MLP" / "index.html").read_text(encoding="utf-8")
    text = _text(mlp)
    for tab in ("PyTorch twin", "Flax Linen port", "Flax NNX port"):
        assert tab in text, tab
    for leaf in row["parity"]["float32"]["leaves"]:  # every leaf, the numbers of the run
        assert leaf["path"] in text, leaf["path"]
        assert docsite._sci(leaf["max_rel"]) in text, leaf
    other = _text((site / "examples" / "SimpleCNN" / "index.html").read_text(encoding="utf-8"))
    assert "Not measured in this build" in other
    assert (site / "charts" / "parity.png").read_bytes()[:8] == PNG_MAGIC
    results_page = _text((site / "results" / "index.html").read_text(encoding="utf-8"))
    assert "make bench" in results_page  # no bench.json here: the page says how to make one


@pytest.mark.slow
def test_gallery_page_shows_every_generated_port(site):
    page = (site / "gallery" / "index.html").read_text(encoding="utf-8")
    squeezed = _squeezed(page)
    files = sorted((ROOT / "docs" / "gallery").glob("*.py"))
    assert files
    for path in files:  # the file as funcmod gallery wrote it, under its model's heading
        assert f'id="{path.stem}"' in page, path.name
        assert re.sub(r"[\s*]+", "", path.read_text(encoding="utf-8")) in squeezed, path.name
    assert "PyTorch (funcmod.corpus)" in _text(page)


@pytest.mark.slow
def test_the_site_fetches_nothing(site):
    fetched = []
    for page in site.rglob("*.html"):
        for url in re.findall(
            r'<(?:script|link|img)[^>]+(?:src|href)="(https?://[^"]+)"',
            page.read_text(encoding="utf-8"),
        ):
            fetched.append(f"{page.relative_to(site)}: {url}")
    assert not fetched, fetched


@pytest.mark.slow
@pytest.mark.parametrize("doc", ["migration", "getting-started", "index"])
def test_the_site_shows_the_snippets_the_tests_run(site, doc):
    """Every python block test_docs executes appears on the built page, tabs included: one
    source, no second copy."""
    from tests.test_docs import parse

    built = site / ("index.html" if doc == "index" else f"{doc}/index.html")
    page = _squeezed(built.read_text(encoding="utf-8"))
    blocks = [b for b in parse(ROOT / "docs" / f"{doc}.md") if b.tag == "python"]
    assert blocks
    missing = [b.line for b in blocks if re.sub(r"[\s*]+", "", b.code) not in page]
    assert not missing, f"docs/{doc}.md: blocks at lines {missing} are not on the page"


@pytest.mark.slow
def test_migration_page_shows_the_tested_tabs(site):
    page = (site / "migration" / "index.html").read_text(encoding="utf-8")
    assert page.count('class="tabbed-set') >= 10
    for title in ("PyTorch", "Flax Linen", "Flax NNX", "funcmod.nn"):
        assert f">{title}</label>" in page, title


def test_charts_draw_from_the_tools_json(results, tmp_path):
    assert cli.main(["charts", "--results", str(results), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "parity.png").read_bytes()[:8] == PNG_MAGIC
    assert not (tmp_path / "bench.png").exists()  # no bench.json: not drawn


def test_charts_refuse_what_they_cannot_draw(tmp_path, capsys):
    assert cli.main(["charts", "--results", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["charts", "--results", str(tmp_path)]) == 2  # an empty folder
    (tmp_path / "digits_mlp.json").write_text(json.dumps({"steps": 3}))
    with pytest.raises(ValueError, match=r"digits_mlp\.json: missing keys \['torch_losses'"):
        charts.write_charts(tmp_path, tmp_path)
    (tmp_path / "compare.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"compare\.json: not valid JSON"):
        charts.load_results(tmp_path)


def test_digits_chart_draws_both_curves(tmp_path):
    # drawing only: the site's digits chart is drawn from a real run's file (make docs)
    run = {"torch_losses": [2.3, 1.1, 0.5], "flax_losses": [2.3, 1.1, 0.5]}
    run |= {"torch_accuracy": 0.5, "flax_accuracy": 0.5}
    path = charts.digits_chart({"mlp": run, "cnn": run}, tmp_path / "digits.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="no run given"):
        charts.digits_chart({}, tmp_path / "none.png")
