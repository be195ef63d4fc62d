"""`moe train` checkpoints and --resume: an interrupted + resumed run equals an uninterrupted one; SIGTERM
leaves a resumable run whose status is not `running`; only commands with --resume advise it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cli.main import main
from routing.config import GateConfig, MoETrainConfig
from routing.train import MultiTask, train
from workbench.runs import Run

ROOT = Path(__file__).resolve().parents[2]


def _cfg(tmp_path, name, **kw):
    routing = GateConfig(gate="comet", experts=4, k=2, local_search=True, ls_fraction=0.3)
    return MoETrainConfig(task="synthetic", routing=routing, epochs=3, n_train=512, batch_size=128, log_every=1,
                          checkpoint_every=5, out=str(tmp_path), name=name, progress=False, **kw)


def _final_state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "final.pt", weights_only=False)["model"]


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, monkeypatch):
    full = train(_cfg(tmp_path, "full"))
    original = MultiTask.batch_loss

    def stop_at_7(self, step):  # 12 steps of 4 per epoch; checkpoints after steps 4, 5, 8, 10, 12
        if step == 7:
            raise KeyboardInterrupt
        return original(self, step)

    monkeypatch.setattr(MultiTask, "batch_loss", stop_at_7)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path, "cut"))
    run = Run.open(tmp_path / "cut")
    status = run.read_json("status.json")
    assert status["status"] == "interrupted" and status["last_checkpoint"].endswith("step-00000005.pt")
    assert max(r["step"] for r in run.metrics()) == 7  # rows up to step 7 were written before the kill
    monkeypatch.setattr(MultiTask, "batch_loss", original)
    resumed = train(_cfg(tmp_path, "cut"), run, resume=True)
    assert run.status() == "done"
    for key in ("test_loss", "best_epoch", "final_test", "test"):
        assert resumed[key] == full[key], key
    a, b = _final_state(tmp_path / "full"), _final_state(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows_full, rows_cut = Run.open(tmp_path / "full").metrics(), run.metrics()
    assert [r["step"] for r in rows_cut] == [r["step"] for r in rows_full]  # the rows after step 5 are not doubled
    assert rows_cut == rows_full
    assert json.loads((tmp_path / "cut" / "load.json").read_text()) == json.loads((tmp_path / "full" / "load.json").read_text())


def test_resume_through_the_cli_refuses_a_changed_flag(tmp_path, capsys):
    assert main(["moe", "train", "--task", "synthetic", "--gate", "topk", "--experts", "4", "--epochs", "1",
                 "--n-train", "256", "--batch-size", "128", "--runs-dir", str(tmp_path), "--name", "r", "--quiet"]) == 0
    rc = main(["moe", "train", "--resume", str(tmp_path / "r"), "--gate", "comet", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert err.startswith("workbench moe: error: gate: --resume") and "drop --gate" in err
    assert main(["moe", "train", "--resume", str(tmp_path / "r"), "--gate", "topk", "--quiet"]) == 0  # same value: fine
    assert Run.open(tmp_path / "r").status() == "done"


def test_sigterm_leaves_a_resumable_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-m", "cli", "moe", "train", "--task", "synthetic", "--gate", "topk", "--experts", "4",
           "--epochs", "400", "--n-train", "256", "--batch-size", "128", "--checkpoint-every", "2", "--threads", "1",
           "--runs-dir", str(tmp_path), "--name", "t", "--quiet"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpts = tmp_path / "t" / "checkpoints"
    deadline = time.time() + 240
    while not list(ckpts.glob("step-*.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "workbench moe: terminated" in err and "workbench moe train --resume" in err
    run = Run.open(tmp_path / "t")
    status = run.read_json("status.json")
    assert status["status"] == "interrupted" and Path(status["last_checkpoint"]).is_file()
    assert not list(tmp_path.rglob("*.tmp"))


def test_interrupt_advice_only_for_commands_with_resume(monkeypatch, capsys):
    import cli.acts
    import cli.moe

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.acts, "main", interrupted)
    monkeypatch.setattr(cli.moe, "main", interrupted)
    assert main(["acts", "cache"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume" not in err
    assert main(["moe", "bench"]) == 130
    assert "--resume" not in capsys.readouterr().err  # bench has no --resume
    assert main(["moe", "train"]) == 130
    assert "continue with `workbench moe train --resume RUN`" in capsys.readouterr().err
