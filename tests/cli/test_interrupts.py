"""SIGTERM (and Ctrl-C) through the front door: the run's status says 'interrupted', its lock is released,
and the advice to pass --resume is given only by commands that have --resume."""

from __future__ import annotations

import json
import os
import signal

import pytest

from cli.main import main

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture
def sigterm_restored():
    yield
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _status(run_dir) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def test_sigterm_during_acts_cache(tiny_model_dir, tmp_path, capsys, monkeypatch, sigterm_restored):
    import workbench.acts

    real = workbench.acts.ActivationStream.forward_chunk
    calls = []

    def chunk(self):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # what `kill PID` does, mid-cache
        return real(self)

    monkeypatch.setattr(workbench.acts.ActivationStream, "forward_chunk", chunk)
    rc = main(["acts", "cache", "--model", str(tiny_model_dir), "--hook", HOOK, "--tokens", "100_000", "--seq-batch", "8",
               "--runs-dir", str(tmp_path), "--name", "c", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 143 and err == "workbench acts: terminated by signal 15\n"  # no --resume advice: acts cache has none
    st = _status(tmp_path / "c")
    assert st["status"] == "interrupted" and st["error"] == "terminated by signal 15"
    assert not (tmp_path / "c" / "run.lock").exists() and not (tmp_path / "c" / "cache" / "manifest.json").exists()


def test_sigterm_during_sae_train(tiny_model_dir, tmp_path, capsys, monkeypatch, sigterm_restored):
    import sae.trainer

    real = sae.trainer.train_step
    calls = []

    def step(*a, **k):
        calls.append(1)
        if len(calls) == 6:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setattr(sae.trainer, "train_step", step)
    argv = ["sae", "train", "--model", str(tiny_model_dir), "--hook", HOOK, "--k", "4", "--expansion", "2",
            "--tokens", "1_536", "--batch-size", "128", "--seq-batch", "16", "--shuffle-buffer", "256",
            "--eval-tokens", "256", "--dead-window", "512", "--checkpoint-every", "4", "--runs-dir", str(tmp_path),
            "--name", "s", "--quiet"]
    rc = main(argv)
    err = capsys.readouterr().err
    run = tmp_path / "s"
    assert rc == 143
    assert err == (f"workbench sae: terminated by signal 15; the last checkpoint is kept, continue with "
                   f"`workbench sae train --resume RUN`\n")
    st = _status(run)
    assert st["status"] == "interrupted" and st["last_checkpoint"].endswith("step-00000004.pt")
    assert not (run / "run.lock").exists()
    monkeypatch.setattr(sae.trainer, "train_step", real)
    assert main(["sae", "train", "--resume", str(run), "--quiet"]) == 0
    assert _status(run)["status"] == "done"
