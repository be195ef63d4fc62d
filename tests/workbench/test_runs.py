import json
import os

import pytest

from workbench.errors import RunError
from workbench.runs import Run, atomic_write_text, list_runs
from workbench.tracking import Tracker


def test_create_open_and_metrics(tmp_path):
    run = Run.create("sae", {"k": 4}, name="a", root=tmp_path)
    run.append_metrics({"step": 1, "loss": 2.0})
    run.append_metrics({"step": 2, "loss": 1.0})
    again = Run.open(tmp_path / "a")
    assert again.kind == "sae" and again.config == {"k": 4}
    assert [r["loss"] for r in again.metrics()] == [2.0, 1.0]
    again.truncate_metrics(1)
    assert [r["step"] for r in again.metrics()] == [1]
    with pytest.raises(RunError, match="already exists"):
        Run.create("sae", {}, name="a", root=tmp_path)


def test_torn_metrics_line_is_skipped(tmp_path):
    run = Run.create("sae", {}, name="a", root=tmp_path)
    run.append_metrics({"step": 1})
    with open(run.path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "lo')  # crash mid-write
    assert run.metrics() == [{"step": 1}]


def test_listing_reports_broken_runs_and_keeps_going(tmp_path):
    Run.create("sae", {}, name="good", root=tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "config.json").write_text("{not json")
    (tmp_path / "nokind").mkdir()
    (tmp_path / "nokind" / "config.json").write_text("{}")
    rows = {r.path.name: r for r in list_runs(tmp_path)}
    assert rows["good"].error is None and rows["good"].run.kind == "sae"
    assert "no config.json" in rows["empty"].error
    assert rows["corrupt"].run is None and "unreadable" in rows["corrupt"].error
    assert "no 'kind' field" in rows["nokind"].error
    with pytest.raises(RunError, match="unreadable"):
        Run.open(tmp_path / "corrupt").meta()


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "f.json"
    atomic_write_text(p, "old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(p, "new")
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["f.json"]  # no temp file left


def test_tracker_writes_metrics_and_offline_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = Run.create("test", {}, name="w", root=tmp_path)
    tr = Tracker(run, project="workbench-tests", config={"a": 1})
    tr.log({"loss": 0.5}, step=3)
    tr.finish()
    assert run.metrics() == [{"step": 3, "loss": 0.5}]
    assert list((run.path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert json.loads((run.path / "wandb.json").read_text())["mode"] == "offline"


def test_tracker_survives_wandb_failure(tmp_path, monkeypatch):
    import wandb

    def fail(*a, **k):
        raise RuntimeError("no network")

    monkeypatch.setattr(wandb, "init", fail)
    run = Run.create("test", {}, name="w", root=tmp_path)
    with pytest.warns(UserWarning, match="wandb could not start"):
        tr = Tracker(run, project="p")
    tr.log({"x": 1}, step=1)
    assert run.metrics() == [{"step": 1, "x": 1}]
