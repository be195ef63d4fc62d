"""The one checkpoint/resume helper: atomic numbered saves, pruning, fallback past corrupt files, clear errors."""

import random

import pytest
import torch

from workbench.checkpoint import CheckpointError, CheckpointStore, rng_state, set_rng_state


def _state(i):
    return {"model": {"w": torch.full((3,), float(i))}, "optimizer": {"lr": 0.1 * i}}


def test_save_prunes_and_load_returns_the_newest(tmp_path):
    store = CheckpointStore(tmp_path / "checkpoints", keep=2)
    assert store.load_latest() is None  # nothing yet (and no directory)
    for step in (4, 8, 12):
        store.save(step, _state(step))
    assert [p.name for p in store.paths()] == ["step-00000008.pt", "step-00000012.pt"]
    ck = store.load_latest(required=("model", "optimizer"))
    assert ck["step"] == 12 and ck["path"] == str(store.path(12))
    assert torch.equal(ck["model"]["w"], torch.full((3,), 12.0)) and ck["optimizer"] == {"lr": pytest.approx(1.2)}


def test_a_corrupt_newest_checkpoint_falls_back_with_a_warning(tmp_path):
    store = CheckpointStore(tmp_path, keep=3)
    for step in (1, 2, 3):
        store.save(step, _state(step))
    newest = store.path(3)
    newest.write_bytes(newest.read_bytes()[:100])  # the tail was lost
    store.path(2).write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable") as seen:
        ck = store.load_latest(required=("model",))
    assert ck["step"] == 1 and len(seen) == 2
    for p in store.paths():
        p.write_bytes(b"")
    with pytest.warns(UserWarning):
        assert store.load_latest() is None


def test_missing_keys_and_foreign_files_are_one_clear_error(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(5, {"model": {}})
    with pytest.raises(CheckpointError, match=r"step-00000005\.pt lacks optimizer, rng \(it has model, step\)"):
        store.load_latest(required=("model", "optimizer", "rng"))
    torch.save([1, 2, 3], store.path(6))
    with pytest.raises(CheckpointError, match="holds a list"):
        store.load_latest()
    torch.save({"model": {}}, store.path(7))  # a dict without a step, as an older trainer wrote
    with pytest.raises(CheckpointError, match="lacks step"):
        store.load_latest()


def test_leftover_temp_files_are_removed_on_load(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(1, _state(1))
    leftover = tmp_path / ".step-00000002.pt.k3j4.tmp"  # a write killed before its rename
    leftover.write_bytes(b"partial")
    assert store.load_latest()["step"] == 1
    assert not leftover.exists() and [p.name for p in tmp_path.iterdir()] == ["step-00000001.pt"]


def test_rng_state_round_trip():
    s = rng_state()
    a = (random.random(), torch.rand(3))
    set_rng_state(s)
    b = (random.random(), torch.rand(3))
    assert a[0] == b[0] and torch.equal(a[1], b[1])


def test_keep_must_be_positive(tmp_path):
    with pytest.raises(ValueError):
        CheckpointStore(tmp_path, keep=0)


def test_run_clean_tmp_covers_the_run_dir_and_its_checkpoints(tmp_path):
    from workbench.runs import Run

    run = Run.create("sae", {}, name="r", root=tmp_path)
    run.write_json("eval.json", {"fvu": 0.1})
    left = [run.path / ".eval.json.a1b2.tmp", run.path / "checkpoints" / ".step-00000004.pt.c3d4.tmp"]
    for p in left:
        p.write_text("partial")
    assert sorted(run.clean_tmp()) == sorted(left)
    assert not any(p.exists() for p in left) and run.read_json("eval.json") == {"fvu": 0.1}
