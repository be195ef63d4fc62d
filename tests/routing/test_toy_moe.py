"""Tiny MoE transformer on the toy world: trains, writes a moe run dir, reports load and IOI specialisation."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformer_lens")

from routing.config import GateConfig, MoETrainConfig  # noqa: E402
from routing.toy_moe import ROLES, ToyMoETransformer, ioi_set, specialisation, summary_rows  # noqa: E402
from workbench import toyworld  # noqa: E402
from cli.main import main  # noqa: E402
from workbench.runs import Run  # noqa: E402
from workbench.toy_train import WordEncoder  # noqa: E402


def test_ioi_set_finds_the_roles():
    enc = WordEncoder(toyworld.vocabulary(), 64)
    d = ioi_set(enc, 20)
    idx = torch.arange(20)
    r = d["roles"]
    assert torch.equal(d["tokens"][idx, r["IO"]], d["io_id"])
    assert torch.equal(d["tokens"][idx, r["S1"]], d["s_id"]) and torch.equal(d["tokens"][idx, r["S2"]], d["s_id"])
    assert (r["S1"] < r["S2"]).all() and (r["S2"] < r["END"]).all()
    endings = torch.tensor([enc.ids[w] for w in ("to", "saw", "met", "called", "with")])
    assert torch.isin(d["tokens"][idx, r["END"]], endings).all()  # END is the prompt's last word
    # ABB: IO comes before S1; BAB: after
    abb = torch.as_tensor(d["attrs"]["pos"] == "ABB")
    assert ((r["IO"] < r["S1"]) == abb).all()


def test_specialisation_is_zero_for_independent_and_one_for_determined():
    rng = np.random.default_rng(0)
    attr = rng.integers(0, 4, 4000)
    same = specialisation(attr, attr)
    assert same["nmi"] == pytest.approx(1.0) and same["excess"] > 0.99
    indep = specialisation(attr, rng.integers(0, 4, 4000))
    assert abs(indep["excess"]) < 0.01 and indep["mi_chance"] > 0


def test_expert_assignment_precision_and_recall_per_value():
    from routing.metrics import assignment_summary, expert_assignment

    # value a -> always expert 0 (alone there); value b -> experts 1 and 2 half each; value c shares expert 2
    values = np.array(["a"] * 4 + ["b"] * 4 + ["c"] * 2)
    experts = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    rows = {r["value"]: r for r in expert_assignment(values, experts, 4)}
    assert rows["a"] == {"value": "a", "expert": 0, "n": 4, "precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert rows["b"]["expert"] == 1 and rows["b"]["precision"] == 1.0 and rows["b"]["recall"] == 0.5
    assert rows["c"]["expert"] == 2 and rows["c"]["precision"] == 0.5 and rows["c"]["recall"] == 1.0
    # tokens routed nowhere (-1) count against recall only
    assert expert_assignment(np.array(["a", "a"]), np.array([0, -1]), 2)[0]["recall"] == 0.5
    rng = np.random.default_rng(0)
    attr = rng.integers(0, 4, 4000)
    same = assignment_summary(attr, attr, 4)
    assert same["f1"] == 1.0 and same["f1_chance"] < 0.4
    indep = assignment_summary(attr, rng.integers(0, 4, 4000), 4)
    assert abs(indep["f1"] - indep["f1_chance"]) < 0.05


def test_hash_gate_routes_on_token_ids():
    cfg = MoETrainConfig(task="toy", routing=GateConfig(gate="hash", experts=4, k=1), d_model=16, n_heads=2,
                         d_hidden=8)
    model = ToyMoETransformer(cfg)
    tokens = torch.tensor([[0, 5, 6, 5], [0, 6, 5, 5]])
    model(tokens)
    for route in model.routes():
        top = route.weights.argmax(-1).view(2, 4)
        assert top[0, 1] == top[1, 2] == top[0, 3] == top[1, 3]  # token 5 always goes to the same expert
    assert all(m.token_ids is None for m in model.moe_blocks)


@pytest.mark.parametrize("gate", ["topk", "expert-choice"])
def test_toy_train_writes_a_moe_run(tmp_path, gate):
    rc = main(["moe", "train", "--task", "toy", "--gate", gate, "--experts", "4", "--k", "2", "--steps", "4",
               "--batch-size", "8", "--d-model", "16", "--n-heads", "2", "--d-hidden", "8", "--ioi-prompts", "40",
               "--runs-dir", str(tmp_path), "--name", "toy", "--quiet", "--log-every", "2", "--threads", "1"])
    assert rc == 0
    run = Run.open(tmp_path / "toy")
    assert run.kind == "moe" and run.status() == "done"
    res = run.read_json("results.json")
    assert res["task"] == "toy" and np.isfinite(res["test_loss"]) and res["test_loss"] > 0
    assert len(res["test"]["load"]) == 2 and len(res["test"]["load"][0]) == 4
    assert sum(res["test"]["load"][0]) > 0
    assert 0 <= res["ioi"]["accuracy"] <= 1 and res["ioi"]["n"] == 40
    for layer in ("L0", "L1"):
        assert set(res["specialisation"][layer]) == set(ROLES)
        a = res["assignment"][layer]["END"]["io"]
        assert 0 <= a["precision"] <= 1 and 0 <= a["recall"] <= 1 and "f1_chance" in a and a["n_values"] > 1
        assert 0 <= res["role_nmi"][layer] <= 1
    assert len(run.metrics()[0]["gate0/load"]) == 4
    assert json.loads((tmp_path / "toy" / "load.json").read_text())["gates"] == [f"{gate}:L0", f"{gate}:L1"]
    row = summary_rows(res)
    assert 0 < row["L1_topk_share"] <= 1 and "L0_END_io" in row
