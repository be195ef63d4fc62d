"""The supervised dictionaries' fit noise (``--n-refit``, :mod:`evals.refit`)."""

from __future__ import annotations

import math

import pytest
import torch

from evals import refit


def test_block_resamples_draw_whole_blocks_in_order_and_are_seeded():
    draws = refit.block_resamples(12, 4, 5, seed=3)
    assert len(draws) == 5
    for idx in draws:
        assert idx.shape == (12,)
        blocks = idx.view(3, 4)
        assert torch.equal(blocks - blocks[:, :1], torch.arange(4).expand(3, 4))  # each block whole, in order
        assert bool((blocks[:, 0] % 4 == 0).all())
    assert any(len(set(idx.tolist())) < 12 for idx in draws)  # with replacement: some block drawn twice
    assert all(torch.equal(a, b) for a, b in zip(draws, refit.block_resamples(12, 4, 5, seed=3)))
    with pytest.raises(ValueError, match="whole blocks"):
        refit.block_resamples(10, 4, 1, seed=0)


def test_add_fit_noise_adds_the_refits_spread_in_quadrature():
    row = {"cross_section": "c", "dictionary": "mean", "location": "L", "attribute": "IO", "f1_threshold": 0.5,
           "coverage": 0.5, "coverage_se": 0.03, "mean_best_f1": 0.6, "mean_best_f1_se": None, "n_features": 3}
    other = {**row, "attribute": "S", "coverage_se": 0.01}
    refits = [[{**row, "coverage": c, "mean_best_f1": f}] for c, f in ((0.4, 0.5), (0.5, 0.6), (0.6, 0.7))]
    assert refit.add_fit_noise([row, other], refits, ("coverage", "mean_best_f1", "n_features")) == 2
    assert row["coverage_se_fit"] == pytest.approx(0.1)
    assert row["coverage_se"] == pytest.approx(math.hypot(0.03, 0.1))
    assert row["mean_best_f1_se"] == pytest.approx(0.1)  # no bootstrap ±: the fit's alone
    assert "n_features_se_fit" not in row  # a number without a ± is left alone
    assert other["coverage_se"] == 0.01 and "coverage_se_fit" not in other  # no refit has the S row

    lacking = {**row, "coverage_se": 0.03}
    part = [[{**row, "coverage": 0.4}], [{**row, "coverage": None}], [{**row, "coverage": 0.6}]]
    assert refit.add_fit_noise([lacking], part, ("coverage",)) == 0 and lacking["coverage_se"] == 0.03


def _section():
    from evals.locations import CrossSection, Location

    return [CrossSection("custom", [Location.parse("blocks.1.hook_resid_post@END"), Location.parse("blocks.0.attn.hook_z[3]@END")], "test")]


@pytest.fixture(scope="module")
def plain_and_refit(toy_model):
    from evals.config import EvalConfig
    from evals.harness import evaluate

    kw = dict(n_train=320, n_eval=40, ks=[2], n_boot=20)
    return evaluate(toy_model, EvalConfig(**kw, n_refit=0), _section()), evaluate(toy_model, EvalConfig(**kw, n_refit=4), _section())


def test_refits_widen_only_the_supervised_interpretability_numbers(plain_and_refit):
    plain, wide = plain_and_refit
    assert wide.settings["n_refit"] == 4 and "refit_s" in wide.timings
    for a, b in zip(plain.interpretability, wide.interpretability):
        assert {k: v for k, v in a.items() if not k.endswith("_se")} == {k: v for k, v in b.items()
                                                                          if not k.endswith("_se") and not k.endswith("_se_fit")}
        for name in ("mean_best_f1", "coverage", "interpretable_fraction"):
            if f"{name}_se_fit" in b:
                assert b["kind"] == "supervised"
                boot = a[f"{name}_se"] if a[f"{name}_se"] is not None and math.isfinite(a[f"{name}_se"]) else 0.0
                assert b[f"{name}_se"] == pytest.approx(math.hypot(boot, b[f"{name}_se_fit"]), abs=1e-9)
    fitted = [b for b in wide.interpretability if b.get("mean_best_f1_se_fit") is not None]
    assert fitted and any(b["mean_best_f1_se_fit"] > 0 for b in fitted)  # 4 refits on 4 blocks move some read-out
    assert repr(plain.approximation) == repr(wide.approximation) and repr(plain.control) == repr(wide.control)  # NaN-safe


def test_a_refit_on_every_block_once_reproduces_the_numbers(toy_model, monkeypatch):
    """The refit path recomputes exactly what the main path computed: with the identity resample every
    refit's number equals the reported one, so every spread is 0 and every ± is the bootstrap's."""
    from evals.config import EvalConfig
    from evals.harness import evaluate

    seen = []
    add = refit.add_fit_noise
    monkeypatch.setattr(refit, "block_resamples", lambda n, m, r, seed: [torch.arange(n)] * r)
    monkeypatch.setattr(refit, "add_fit_noise", lambda rows, refits, *a: (seen.extend(refits), add(rows, refits, *a))[1])
    from evals.locations import CrossSection, Location

    shared = CrossSection("shared", [Location.parse("blocks.0.attn.hook_z[3]@END")], "a location of the other section too")
    said = []
    res = evaluate(toy_model, EvalConfig(n_train=320, n_eval=40, ks=[2], n_boot=20, n_refit=2), _section() + [shared],
                   progress=said.append)
    assert [m for m in said if m.startswith("fit noise: refit")] == ["fit noise: refit 1 of 2", "fit noise: refit 2 of 2"]
    names = ("mean_best_f1", "coverage", "interpretable_fraction")
    numbers = [(r, n) for r in res.interpretability if r["kind"] == "supervised" for n in names if r.get(n) is not None]
    assert numbers and all(r[f"{n}_se_fit"] == 0.0 for r, n in numbers)  # every supervised number was refitted
    assert {r["cross_section"] for r, _ in numbers} == {"custom", "shared"}  # a shared location's rows in both sections
    assert len(seen) == 2
    for refit_rows in seen:
        by = {refit.row_key(r): r for r in refit_rows}
        assert all(by[refit.row_key(r)][n] == r[n] for r, n in numbers)


def test_refits_need_a_fit_split():
    from evals.config import EvalConfig
    from workbench.errors import ConfigError

    with pytest.raises(ConfigError, match="--n-fit 0 has none"):
        EvalConfig(n_fit=0, n_refit=3)
    with pytest.raises(ConfigError, match="n_refit"):
        EvalConfig(n_refit=-1)
    assert EvalConfig().n_refit == 8  # the default: refits where there is a fit split and a ±
    assert EvalConfig(n_fit=0).n_refit == 0 and EvalConfig(n_boot=0).n_refit == 0


def test_a_fit_split_of_one_block_gets_no_refits_and_says_why(toy_model):
    from evals.config import EvalConfig
    from evals.harness import evaluate

    said = []
    res = evaluate(toy_model, EvalConfig(n_train=160, n_eval=20, n_fit=10, ks=[2], n_boot=10, n_refit=3), _section()[:1],
                   progress=said.append)
    assert any("fit split is one block" in m and "--n-fit" in m for m in said)
    assert not any(k.endswith("_se_fit") for r in res.interpretability for k in r)


def _tiny_sae_eval(tiny_model_dir, save_sae, **cfg):
    import tempfile
    from pathlib import Path

    from evals.config import EvalConfig
    from evals.dictionary import load_families
    from evals.harness import evaluate
    from evals.locations import CrossSection, Location
    from workbench.models import load_model

    model = load_model(str(tiny_model_dir), "cpu")
    with tempfile.TemporaryDirectory() as d:
        families = load_families([str(save_sae(Path(d) / "sae_z", 16, "blocks.0.attn.hook_z", 1))])
    sections = [CrossSection("custom", [Location.parse("blocks.0.attn.hook_z[1]@END")], "test")]
    return evaluate(model, EvalConfig(model=str(tiny_model_dir), n_train=100, n_eval=24, ks=[2], **cfg), sections, families)


def test_the_interpretable_features_numbers_get_the_spread_of_choosing_them_again(tiny_model_dir, save_sae, monkeypatch):
    """Known answer: when half the re-choices keep every feature (the full reconstruction, whose numbers the
    row carries as *_full) and half keep the full-sample choice, the spread of sufficiency over the 8 choices is
    that of 4 + 4 copies of the two values, added in quadrature to the bootstrap's ±."""
    from evals import interpretation as ip

    plain = _tiny_sae_eval(tiny_model_dir, save_sae, n_boot=10, n_refit=0)

    def alternate(self, threshold, w):
        keep = self.interpretable(threshold)
        return torch.stack([torch.ones_like(keep) if r % 2 == 0 else keep for r in range(len(w))])

    monkeypatch.setattr(ip.Scores, "interpretable_under", alternate)
    res = _tiny_sae_eval(tiny_model_dir, save_sae, n_boot=10, n_refit=8)
    assert res.interpretable and len(res.interpretable) == len(plain.interpretable)
    for a, b in zip(plain.interpretable, res.interpretable):
        assert b["sufficiency"] == a["sufficiency"]  # the reported number is the full-sample choice's
        vals = torch.tensor([b["sufficiency_full"], b["sufficiency"]] * 4, dtype=torch.float64)
        assert b["sufficiency_se_fit"] == pytest.approx(float(vals.std()), abs=1e-6)
        assert b["sufficiency_se"] == pytest.approx(math.hypot(a["sufficiency_se"], b["sufficiency_se_fit"]), abs=1e-9)


def test_re_choosing_the_same_features_changes_no_number(tiny_model_dir, save_sae, monkeypatch):
    from evals import interpretation as ip

    monkeypatch.setattr(ip.Scores, "interpretable_under",
                        lambda self, t, w: self.interpretable(t).expand(len(w), -1).clone())
    res = _tiny_sae_eval(tiny_model_dir, save_sae, n_boot=10, n_refit=3)
    for r in res.interpretable:
        for n in ("sufficiency", "necessity", "ld_recovered", "top1_reconstructed", "l0_interpretable"):
            assert r[f"{n}_se_fit"] == 0.0


def test_interpretable_under_re_decides_the_threshold_on_each_resample():
    """Under the identity resample it is the full-sample choice; under a resample that drops the prompts where
    a feature fires off its interpretation it becomes interpretable; a dead feature never is."""
    from evals import interpretation as ip

    # 6 prompts, one kind with values a / b; feature 0 fires on the a prompts and on one b prompt; feature 1 never fires
    kind = ip.Kind("K", ["a", "b"], torch.tensor([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1], [0, 1]], dtype=torch.float32))
    active = torch.tensor([[1, 0], [1, 0], [1, 0], [1, 0], [0, 0], [0, 0]], dtype=torch.bool)
    s = ip.score(active, [kind])
    assert s.best_f1[0] == pytest.approx(6 / 7) and not s.interpretable(0.9)[0]
    w = torch.tensor([[1.0] * 6, [1, 1, 1, 0, 2, 1]])  # the second drops prompt 3 (the b prompt feature 0 fires on)
    under = s.interpretable_under(0.9, w)
    assert under.tolist() == [[False, False], [True, False]]
