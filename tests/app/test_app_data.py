"""app/data.py outside Streamlit: runs written before the dead fraction had one name still show it."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from workbench.runs import Run

APP = Path(__file__).resolve().parents[2] / "app"


@pytest.fixture(scope="module")
def data():
    spec = importlib.util.spec_from_file_location("app_data_under_test", APP / "data.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the module runs
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


def _sae_run(root: Path, name: str) -> Run:
    return Run.create("sae", {"acts": {"model": "toy-ioi", "hook": "blocks.1.hook_resid_post"}, "sae": {"arch": "topk", "k": 4}},
                      name=name, root=root)


def test_old_and_new_dead_fraction_names_read_the_same(data, tmp_path):
    new = _sae_run(tmp_path, "new")
    new.write_json("eval.json", {"fvu": 0.2, "l0_mean": 4.0, "dead_fraction": 0.125})
    old = _sae_run(tmp_path, "old")  # eval.json as written before: a percentage under dead_pct
    old.write_json("eval.json", {"fvu": 0.2, "l0_mean": 4.0, "dead_pct": 12.5})
    unfinished = _sae_run(tmp_path, "unfinished")  # no eval.json: the last metrics row, old name dead_frac
    unfinished.append_metrics({"step": 2, "fvu": 0.3, "l0_mean": 4.0, "dead_frac": 0.25})
    rows = {r.name: data.summarize(r, r.meta()) for r in (new, old, unfinished)}
    assert rows["new"]["dead_fraction"] == pytest.approx(0.125)
    assert rows["old"]["dead_fraction"] == pytest.approx(0.125)
    assert rows["unfinished"]["dead_fraction"] == pytest.approx(0.25)
    assert json.loads((new.path / "eval.json").read_text())["dead_fraction"] == 0.125


def test_no_dead_fraction_is_none(data):
    assert data.dead_fraction({"fvu": 0.1}) is None and data.dead_fraction({"dead_fraction": None}) is None


def test_a_run_with_a_non_utf8_config_is_listed_as_unreadable(data, tmp_path):
    """Issue 17, item 1: one such run dir made every page raise; now it is one 'unreadable' row."""
    _sae_run(tmp_path, "good")
    (tmp_path / "latin1").mkdir()
    (tmp_path / "latin1" / "config.json").write_bytes(b'{"kind": "sae", "note": "caf\xe9"}')
    table, bad = data._scan.__wrapped__(str(tmp_path), ())
    assert list(table["name"]) == ["good"]
    assert [b["name"] for b in bad] == ["latin1"] and "utf-8" in bad[0]["error"]
