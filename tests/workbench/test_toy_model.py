"""The shipped model meets its acceptance bar, and the training command works end to end."""

import torch

from cli.main import main as cli
from workbench.checkpoint import CheckpointStore
from workbench.runs import Run
from workbench.toy_train import ModelTrainConfig, evaluate, train


def test_shipped_model_solves_ioi_on_heldout_names_and_template(toy_model):
    res = evaluate(toy_model, n=300)
    for split in ("heldout_names", "heldout_template"):
        assert res[split]["accuracy"] >= 0.9, res[split]
        assert res[split]["logit_diff"] >= 2.5, res[split]
    # the answer flows through attention at END: ablating the last layer's attention collapses LD
    assert res["ablation"]["ablate_attn_end_L1"] < 0.25 * res["heldout_names"]["logit_diff"]


def test_model_eval_command_prints_the_table(capsys, tmp_path):
    assert cli(["model", "eval", "--n", "100", "--json", str(tmp_path / "e.json")]) == 0
    out = capsys.readouterr().out
    assert "heldout_template" in out and "ablate_attn_end_L1" in out
    assert (tmp_path / "e.json").exists()


def test_train_resume_continues_exactly(tmp_path):
    cfg = ModelTrainConfig(steps=6, warmup_steps=1, eval_every=3, eval_prompts=8, batch_size=8,
                           d_model=32, n_heads=2)
    full = Run.create("model", {}, name="full", root=tmp_path)
    train(cfg, full, progress=False)
    half = Run.create("model", {}, name="half", root=tmp_path)
    _train_until(cfg, half, stop_after=3)  # crash right after the step-3 checkpoint
    assert [p.name for p in CheckpointStore(half.path / "checkpoints").paths()] == ["step-00000003.pt"]
    train(cfg, half, resume=True, progress=False)
    a = CheckpointStore(full.path / "checkpoints").load_latest()
    b = CheckpointStore(half.path / "checkpoints").load_latest()
    assert a["step"] == b["step"] == 6
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [r["step"] for r in half.metrics()] == [3, 6]


def _train_until(cfg, run, stop_after):
    """Run training but crash right after the checkpoint at `stop_after` steps."""
    real = CheckpointStore.save

    def save_then_crash(self, step, state):
        path = real(self, step, state)
        if step >= stop_after:
            raise KeyboardInterrupt
        return path

    CheckpointStore.save = save_then_crash
    try:
        train(cfg, run, progress=False)
    except KeyboardInterrupt:
        pass
    finally:
        CheckpointStore.save = real


def test_cli_reports_bad_input_in_one_line(capsys, tmp_path):
    assert cli(["acts", "cache", "--hook", "blocks.1.hook_resid_pots", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "unknown hook name" in err and "blocks.1.hook_resid_post" in err and "Traceback" not in err
    assert cli(["model", "train", "--steps", "0"]) == 2
    assert "steps: must be positive" in capsys.readouterr().err
    assert cli(["acts", "info", str(tmp_path / "nowhere")]) == 2
    assert "re-run `workbench acts cache" in capsys.readouterr().err
    assert cli(["nosuch"]) == 2
