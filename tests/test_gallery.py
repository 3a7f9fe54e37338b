"""``funcmod gallery``: writes the ported corpus, and --check reports a stale or missing page
without writing (the currency of docs/gallery itself is tests/test_port_corpus.py's)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from funcmod.tools import gallery
from funcmod.tools.cli import main
from funcmod.tools.gallery import page, write_gallery


@pytest.mark.slow  # a port: 4 s on an idle machine, 30 s on a busy one
def test_a_page_is_the_ported_source_under_a_header():
    text = gallery.render("weightnorm_mlp")
    assert text.startswith(page("weightnorm_mlp", "")) and "class WeightNormMLP" in text
    compile(text, "weightnorm_mlp.py", "exec")  # a page is valid Python


def test_check_reports_missing_and_stale_pages_and_writes_nothing(tmp_path, capsys, monkeypatch):
    # The command's logic, with a stand-in for the porter (ported pages: the test above and
    # tests/test_port_corpus.py's currency check).
    monkeypatch.setattr(gallery, "render", lambda name: page(name, f"{name} = 1\n"))
    assert main(["gallery", "--check", "--out", str(tmp_path), "weightnorm_mlp"]) == 1
    assert list(tmp_path.iterdir()) == []
    assert "weightnorm_mlp.py: out of date" in capsys.readouterr().out

    assert write_gallery(tmp_path, ["weightnorm_mlp"]) == ["weightnorm_mlp"]
    text = (tmp_path / "weightnorm_mlp.py").read_text(encoding="utf-8")
    assert text == page("weightnorm_mlp", "weightnorm_mlp = 1\n")
    assert main(["gallery", "--check", "--out", str(tmp_path), "weightnorm_mlp"]) == 0

    (tmp_path / "weightnorm_mlp.py").write_text(text + "# edited\n", encoding="utf-8")
    assert write_gallery(tmp_path, ["weightnorm_mlp"], check=True) == ["weightnorm_mlp"]
    assert (tmp_path / "weightnorm_mlp.py").read_text(encoding="utf-8").endswith("# edited\n")


def test_unknown_models_are_refused_before_any_work(tmp_path, capsys):
    assert main(["gallery", "--out", str(tmp_path), "resnet", "alexnet"]) == 2
    assert "unknown models ['alexnet']" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
