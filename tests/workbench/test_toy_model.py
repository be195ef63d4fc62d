"""The shipped model meets its acceptance bar, and the training command works end to end."""

import torch

from cli.main import main as cli
from workbench.checkpoint import CheckpointStore
from workbench.runs import Run
from workbench.toy_train import ModelTrainConfig, evaluate, train


def test_shipped_model_passes_acceptance_on_every_split_and_family(toy_model):
    from cli.model import passes

    res = evaluate(toy_model, n=200, n_family=60)
    for split in ("train_names", "heldout_names", "heldout_productions", "heldout_long"):
        assert passes(res[split]), (split, res[split])
    for family, by_split in res["families"].items():
        for split, r in by_split.items():
            assert r["accuracy"] >= 0.85 and r["top1"] >= 0.7, (family, split, r)  # 60 prompts: some slack
    # the answer flows through attention at END: ablating it in every layer collapses LD
    assert res["ablation"]["ablate_attn_end_all"] < 0.25 * res["heldout_names"]["logit_diff"]


def test_shipped_model_scores_frames_the_grammar_never_makes(toy_model):
    """IOI in sentences written by hand, with held-out names, none of them a grammar production."""
    from workbench.ioi import score_prompt

    frames = ["{A} and {B} were at the park . it was a long day . {S} sat down . then {S} gave a ball to",
              "{A} saw {B} . {B} saw {A} . then {S} handed a book to",
              "When {A} and {B} went home , {S} walked away and then {S} gave it to"]
    names = [("Boris", "Cora"), ("Dean", "Edith"), ("Hank", "Ilse"), ("Liam", "Maya")]
    wins = 0
    for frame in frames:
        for a, b in names:
            for io, s in ((a, b), (b, a)):
                r = score_prompt(toy_model, frame.format(A=a, B=b, S=s), io=io, s=s)
                wins += r["logit_diff"] > 0
    assert wins >= 0.75 * len(frames) * len(names) * 2


def test_model_eval_command_prints_the_table(capsys, tmp_path):
    assert cli(["model", "eval", "--n", "60", "--json", str(tmp_path / "e.json")]) == 0
    out = capsys.readouterr().out
    assert "heldout_productions" in out and "coordinated / heldout_long" in out and "ablate_attn_end_all" in out
    assert (tmp_path / "e.json").exists()


def test_model_eval_scores_a_users_prompt_or_says_why_not(capsys):
    assert cli(["model", "eval", "--prompt", "When Boris and Cora went home , Cora gave a ball to"]) == 0
    out = capsys.readouterr().out
    assert "IO Boris  S Cora" in out and "IO is top-1" in out
    assert cli(["model", "eval", "--prompt", "When Boris and Cora went hom , Cora gave a ball to"]) == 2
    err = capsys.readouterr().err
    assert "'hom' (closest: home" in err and "Traceback" not in err
    assert cli(["model", "eval", "--prompt", "When Boris and Cora went home , Dean gave a ball to"]) == 2
    assert "cannot tell IO and S apart" in capsys.readouterr().err


def test_model_health_reports_every_residual_hook(tiny_model_dir, capsys):
    assert cli(["model", "health", "--model", str(tiny_model_dir), "--n", "16"]) == 0
    out = capsys.readouterr().out
    for hook in ("blocks.0.hook_resid_pre", "blocks.0.hook_resid_post", "blocks.1.hook_resid_post"):
        assert hook in out


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


def test_train_logs_to_wandb_offline_with_sections_and_the_model_as_an_artifact(tmp_path, monkeypatch, capsys):
    from tests.wandb_records import offline_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = ModelTrainConfig(steps=4, warmup_steps=1, eval_every=2, eval_prompts=8, batch_size=8, d_model=32, n_heads=2,
                           wandb_project="p", wandb_tags=("toy",), wandb_group="g")
    run = Run.create("model", {}, name="m", root=tmp_path)
    train(cfg, run, progress=False)
    got = offline_run(run.path)
    assert got["run"]["tags"] == ["toy"] and got["run"]["group"] == "g" and got["run"]["config"]["lr"] == cfg.lr
    keys = set().union(*got["history"])
    assert {"train/loss", "train/lr", "eval/heldout_names/accuracy"} <= keys
    (art,) = got["artifacts"]
    assert art["name"] == "m-model" and "model.safetensors" in art["files"]
    assert f"wandb sync {got['dir'].resolve()}" in capsys.readouterr().err
