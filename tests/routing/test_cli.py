"""`workbench moe ...` end to end on tiny configs, through the front door."""

import json

import pytest

from cli.main import main
from workbench.runs import Run


def test_moe_train_writes_a_run_dir(tmp_path):
    rc = main(["moe", "train", "--task", "synthetic", "--gate", "comet", "--experts", "4", "--k", "2",
               "--local-search", "--epochs", "2", "--n-train", "512", "--batch-size", "128", "--runs-dir", str(tmp_path),
               "--name", "tiny", "--quiet", "--log-every", "2"])
    assert rc == 0
    run = Run.open(tmp_path / "tiny")
    assert run.kind == "moe" and run.status() == "done"
    assert (tmp_path / "tiny" / "checkpoints" / "final.pt").is_file()
    assert run.config["routing"]["gate"] == "comet" and run.config["routing"]["local_search"] is True
    rows = run.metrics()
    assert rows and len(rows[0]["gate0/load"]) == 4
    res = run.read_json("results.json")
    assert res["gate"] == "comet+" and res["test_loss"] > 0
    load = run.read_json("load.json")
    assert len(load["epochs"]) == 2 and len(load["epochs"][0]["load"][0]) == 4


def test_sparse_ot_run_saves_a_plan_and_planted_nmi(tmp_path):
    rc = main(["moe", "train", "--task", "planted", "--gate", "sparse-ot", "--experts", "4", "--k", "1",
               "--clusters", "4", "--epochs", "1", "--n-train", "512", "--batch-size", "128", "--ot-group", "64",
               "--runs-dir", str(tmp_path), "--name", "ot", "--quiet"])
    assert rc == 0
    run = Run.open(tmp_path / "ot")
    plan = run.read_json("ot_plan.json")["plan"]
    assert len(plan) == 32 and len(plan[0]) == 4
    assert 0 <= run.read_json("results.json")["nmi"] <= 1


def test_bench_summarises_gates_over_seeds(tmp_path, capsys):
    rc = main(["moe", "bench", "--task", "planted", "--gates", "topk,hash", "--seeds", "2", "--experts", "4",
               "--clusters", "4", "--epochs", "1", "--n-train", "256", "--batch-size", "128", "--runs-dir", str(tmp_path),
               "--bench-name", "b"])
    assert rc == 0
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert set(summary["gates"]) == {"topk", "hash"} and summary["gates"]["topk"]["n"] == 2
    assert "nmi_mean" in summary["gates"]["hash"]
    assert "| topk |" in capsys.readouterr().out


def test_bench_groups_its_wandb_runs_and_tags_each_with_its_gate(tmp_path, capsys, monkeypatch):
    from tests.wandb_records import offline_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    rc = main(["moe", "bench", "--task", "planted", "--gates", "topk,hash", "--seeds", "1", "--experts", "4",
               "--clusters", "4", "--epochs", "1", "--n-train", "256", "--batch-size", "128", "--runs-dir", str(tmp_path),
               "--bench-name", "b", "--wandb-project", "p", "--wandb-tags", "nightly"])
    assert rc == 0
    for gate in ("topk", "hash"):
        got = offline_run(tmp_path / "b" / f"{gate}-s0")
        assert got["run"]["group"] == "b" and got["run"]["tags"] == ["nightly", gate]
        keys = set().union(*got["history"])
        assert {"train/loss", "train/lr"} <= keys and any(k.startswith("eval/") for k in keys)
        (art,) = got["artifacts"]
        assert art["files"] == ["final.pt"] and art["metadata"]["gate"] == gate
    assert capsys.readouterr().err.count("wandb sync ") == 2


@pytest.mark.parametrize("argv,message", [
    (["--experts", "4", "--k", "9"], "workbench moe: error: k: k = 9 exceeds experts = 4; pass --k at most --experts"),
    (["--gate", "nope"], "workbench moe: error: gate: unknown value 'nope'; choose one of topk, hash, expert-choice, "
                        "base, s-base, dselect, comet, sparse-ot"),
    (["--task", "movielens", "--max-examples", "5"],
     "workbench moe: error: max_examples: 5 examples leave 0 validation and 1 test examples, too few to score "
     "ROC-AUC; pass --max-examples 1000 or more, or 0 for all 200,000"),
    pytest.param(["--device", "cuda"], "workbench moe: error: device: 'cuda' asks for a GPU, but this torch is a "
                 "CPU-only build; pass --device cpu",
                 marks=pytest.mark.skipif(__import__("torch").version.cuda is not None, reason="a CUDA build of torch")),
    (["--max-examples", "5"],  # the default task is synthetic
     "workbench moe: error: max_examples: applies to --task movielens only, not synthetic; drop --max-examples, "
     "or use --n-train for the synthetic and planted tasks"),
])
def test_bad_config_is_one_line_error(capsys, tmp_path, argv, message):
    """Each message names the field, the problem and the fix, on one line, before any training starts."""
    rc = main(["moe", "train", *argv, "--runs-dir", str(tmp_path), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err == message  # the whole line: field, problem and fix
    assert not any(tmp_path.iterdir())  # no run dir was created for a rejected config


def test_solve_bench_runs_on_a_tiny_problem(capsys):
    rc = main(["moe", "solve-bench", "--rows", "4", "--cols", "32", "--batch", "3", "--batch-cols", "16",
               "--problems", "1", "--gates", "false"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "batched 3 problems of 4 x 16" in out and "bfgs-f64" in out
