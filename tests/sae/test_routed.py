"""Routed SAEs: any gate routes, sparse gradients match dense autograd, bad shapes are one-line errors,
training/saving/eval/analyze treat them like any SAE, and resume is bit-identical."""

import json

import pytest
import torch

from sae.config import SAEConfig
from sae.model import build_sae
from sae.trainer import train
from workbench.errors import ConfigError

GATES = ["topk", "expert-choice", "comet", "sparse-ot", "hash", "dselect", "base"]


def _sae(gate="topk", per_token=1, kernel="sparse", **kw):
    cfg = SAEConfig(arch="routed", k=4, d_sae=64, gate=gate, experts=4, experts_per_token=per_token, kernel=kernel,
                    **kw).resolve(16)
    s = build_sae(cfg)
    s.init_weights(torch.Generator().manual_seed(0))
    return s


@pytest.mark.parametrize("gate", GATES)
def test_every_gate_routes_and_latents_stay_in_the_routed_experts(gate):
    s = _sae(gate)
    x = torch.randn(256, 16, generator=torch.Generator().manual_seed(1))
    out = s(x)
    route = out.route.allocation
    assert route.shape == (256, 4)
    routed = route.mask()  # (N, E)
    # every active latent belongs to an expert its token was routed to, and no token gets more than k
    assert routed[out.alloc.rows, s.expert_of(out.alloc.cols)].all()
    assert int(out.alloc.row_counts().max()) <= s.cfg.k
    # tokens with at least one routed expert get exactly k latents (each expert holds >= k)
    has = routed.any(1)
    assert (out.alloc.row_counts()[has] == s.cfg.k).all()
    # each latent's code is its ReLU pre-activation times the combine weight of its expert
    pre = (out.x_c @ s.W_enc + s.b_enc)[out.alloc.rows, out.alloc.cols].relu()
    w = route.dense()[out.alloc.rows, s.expert_of(out.alloc.cols)]
    torch.testing.assert_close(out.values, pre * w)


@pytest.mark.parametrize("gate,per_token", [("topk", 1), ("topk", 2), ("expert-choice", 1), ("comet", 1), ("sparse-ot", 2)])
def test_sparse_gradients_match_dense_autograd(gate, per_token):
    x = torch.randn(128, 16, generator=torch.Generator().manual_seed(2))
    grads = []
    for kernel in ("sparse", "dense"):
        torch.manual_seed(0)
        s = _sae(gate, per_token, kernel=kernel)
        out = s(x)
        ((out.x_hat - x).pow(2).mean() + out.route.aux_loss()).backward()
        grads.append({n: p.grad for n, p in s.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert grads[0][n] is not None, n
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-4, msg=n)
    gate_grads = [g for n, g in grads[0].items() if n.startswith("gate.")]
    assert gate_grads and sum(float(g.abs().sum()) for g in gate_grads) > 0  # the router learns from the reconstruction


@pytest.mark.parametrize("gate", ["topk", "comet", "sparse-ot"])
def test_the_router_learns_from_the_reconstruction_alone(gate):
    s = _sae(gate, balance_coef=0.0)
    x = torch.randn(128, 16, generator=torch.Generator().manual_seed(4))
    out = s(x)
    (out.x_hat - x).pow(2).mean().backward()  # no aux loss: the gradient reaches the gate through the codes
    assert sum(float(p.grad.abs().sum()) for n, p in s.named_parameters() if n.startswith("gate.") and p.grad is not None) > 0


def test_top1_routing_picks_the_switch_sae_codes():
    """Top-1 gate: the codes are the top-k of p_e * ReLU(pre) over the chosen expert's latents (Switch SAE)."""
    s = _sae("topk")
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(3))
    out = s(x)
    with torch.no_grad():
        p = s.gate.router(out.x_c).softmax(-1)  # (N, E)
        e = p.argmax(1)
        pre = (out.x_c @ s.W_enc + s.b_enc).relu().reshape(64, 4, 16)[torch.arange(64), e]  # (N, m)
        want = (p.max(1).values[:, None] * pre).topk(4, dim=1).values.sort(1).values
    got = out.codes().reshape(64, 4, 16)[torch.arange(64), e].sort(1).values[:, -4:]
    torch.testing.assert_close(got, want)


def test_gates_without_a_balance_term_get_the_switch_loss():
    out = _sae("comet")(torch.randn(64, 16))
    assert "balance" in out.route.aux_losses and out.route.aux_losses["balance"] > 0
    assert _sae("comet", balance_coef=0.0)(torch.randn(64, 16)).route.aux_losses.get("balance") is None
    assert "balance" not in _sae("expert-choice")(torch.randn(64, 16)).route.aux_losses  # balanced by construction


@pytest.mark.parametrize("kw,field", [
    (dict(experts=128), "experts"),  # experts > d_sae
    (dict(experts=48), "experts"),  # d_sae not divisible
    (dict(experts=32), "experts"),  # 64 / 32 = 2 latents per expert < k = 4
    (dict(experts=4, experts_per_token=5), "experts_per_token"),
    (dict(gate="nope"), "gate"),
    (dict(gate="dselect", experts=12, d_sae=96), "experts"),  # dselect needs a power of two
])
def test_shapes_a_gate_cannot_route_are_one_line_errors(kw, field):
    args = dict(arch="routed", k=4, d_sae=64, experts=4)
    args.update(kw)
    with pytest.raises(ConfigError) as e:
        SAEConfig(**args)
    msg = str(e.value)
    assert msg.startswith(f"{field}:") and "\n" not in msg and ("pass" in msg or "choose" in msg)


def test_expert_choice_needs_a_batch_of_at_least_the_experts(tiny_cfg):
    from dataclasses import replace

    cfg = tiny_cfg()
    with pytest.raises(ConfigError, match="^batch_size:.*pass --batch-size >= 256"):
        type(cfg)(acts=cfg.acts, sae=replace(cfg.sae, arch="routed", gate="expert-choice", experts=256, d_sae=1024),
                  tokens=cfg.tokens, runs_dir=cfg.runs_dir)


def test_routed_train_resume_is_bit_identical(tiny_cfg, tiny_model):
    from dataclasses import replace

    from tests.sae.test_train import Kill, _kill_at, _weights

    def cfg(name):
        c = tiny_cfg(name=name)
        return replace(c, sae=replace(c.sae, arch="routed", gate="topk", experts=4, k=4))

    full = train(cfg("full"), model=tiny_model, progress=False)
    with pytest.raises(Kill):
        train(cfg("cut"), model=tiny_model, progress=False, on_step=_kill_at(6))
    resumed = train(cfg("cut"), resume=full.path.parent / "cut", model=tiny_model, progress=False)
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys() and any(k.startswith("gate.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = [r for r in full.metrics() if "fvu" in r]
    assert rows and all("route_balance" in r and "route_load_cv" in r for r in rows)


@pytest.mark.parametrize("gate", ["topk", "comet"])
def test_cli_train_eval_analyze_and_load_a_routed_sae(tiny_model_dir, tmp_path, capsys, gate):
    from cli.main import main
    from evals.dictionary import load_sae
    from sae import io

    runs = tmp_path / "runs"
    assert main(["sae", "train", "--model", str(tiny_model_dir), "--hook", "blocks.1.hook_resid_post", "--arch", "routed",
                 "--gate", gate, "--experts", "4", "--k", "4", "--expansion", "2", "--tokens", "1_024", "--batch-size", "128",
                 "--seq-batch", "16", "--shuffle-buffer", "256", "--eval-tokens", "256", "--dead-window", "384",
                 "--runs-dir", str(runs), "--name", "r", "--quiet"]) == 0
    run = runs / "r"
    ev = json.loads((run / "eval.json").read_text())
    assert ev["arch"] == "routed" and ev["mode"] == "batch" and 0 < ev["l0_mean"] <= 4 and ev["fvu"] < 1.5
    cfg = json.loads((run / "cfg.json").read_text())
    assert cfg["workbench"]["sae"]["gate"] == gate and cfg["workbench"]["sae"]["experts"] == 4
    # the saved SAE takes raw activations: same codes as the trained one on the scaled input
    loaded = io.load(run)
    x = torch.randn(32, loaded.cfg.d_in) * 3
    assert loaded.encode(x).shape == (32, loaded.cfg.d_sae)
    assert loaded.experts_of(x).shape == (32, 4)
    assert main(["sae", "eval", str(run), "--tokens", "256", "--no-ce"]) == 0
    assert "saved SAE (batch mode)" in capsys.readouterr().out
    assert main(["sae", "analyze", str(run), "--tokens", "256", "--seq-batch", "16", "--quiet"]) == 0
    an = json.loads((run / "analysis.json").read_text())
    ex = an["experts"]
    m = loaded.cfg.d_sae // 4
    assert ex["n_experts"] == 4 and ex["latents_per_expert"] == m and abs(sum(ex["load"]) - 1) < 1e-6
    import pandas as pd

    lat = pd.read_parquet(run / "analysis_latents.parquet")
    assert (lat["expert"] == lat["latent"] // m).all()
    d = load_sae(run)
    assert d.arch == "routed" and d.dictionary.encode(x).shape == (32, loaded.cfg.d_sae)


def test_folded_routed_sae_routes_raw_inputs_like_the_trained_one_on_scaled_inputs():
    s = _sae("topk")
    x = torch.randn(64, 16)
    f = s.folded(2.5)
    with torch.no_grad():
        a, b = s(x * 2.5), f(x)
    torch.testing.assert_close(b.x_hat * 2.5, a.x_hat, atol=1e-5, rtol=1e-5)
    assert torch.equal(a.route.allocation.cols, b.route.allocation.cols)


def test_one_expert_is_exactly_a_topk_sae():
    """With E = 1 every token goes to the one expert with weight 1: the codes and reconstruction are TopK's."""
    r = build_sae(SAEConfig(arch="routed", k=4, d_sae=64, experts=1, gate="topk").resolve(16))
    t = build_sae(SAEConfig(arch="topk", k=4, d_sae=64).resolve(16))
    r.init_weights(torch.Generator().manual_seed(0))
    t.load_state_dict({k: v for k, v in r.state_dict().items() if k in t.state_dict()})
    x = torch.randn(100, 16, generator=torch.Generator().manual_seed(5))
    a, b = r(x), t(x)
    torch.testing.assert_close(a.codes(), b.codes())
    torch.testing.assert_close(a.x_hat, b.x_hat)
