"""The known-answer construction: activations = sums of planted attribute vectors + noise.

a(prompt) = sum_i p_{i, v_i(prompt)} + noise, with orthonormal planted vectors p. Then the mean and
MSE dictionaries recover the planted vectors (centred), sufficiency / necessity are ~1 under a
readout LD = c + <w, a>, an "SAE" whose decoder rows are the planted vectors scores F1 = 1 for every
attribute value, and greedy / F1-guided edits swap exactly the planted features.
"""

from __future__ import annotations

import pytest
import torch

from evals import approximation as ap
from evals import control as ct
from evals import interpretability as it
from evals.data import ATTRIBUTES, balanced_prompts, counterfactual, labels
from evals.dictionary import Dictionary, attribute_values, fit_mean, fit_mse, one_hot_codes
from workbench import toyworld
from workbench.errors import ConfigError

NAMES = toyworld.IOI_NAMES[:20]
D = 64
NOISE = 0.02


class Planted:
    """Orthonormal planted vectors, one per (attribute, value)."""

    def __init__(self, prompts, seed=0):
        self.values = attribute_values(prompts)
        n = sum(len(v) for v in self.values.values())
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(D, n, generator=g))
        self.P = q.T.contiguous()  # (n_values, D) orthonormal rows
        self.gen = g

    def acts(self, prompts):
        c = one_hot_codes(prompts, self.values)
        return c @ self.P + NOISE * torch.randn(len(prompts), D, generator=self.gen)


class PlantedSAE:
    """An "SAE" whose decoder rows are exactly the planted vectors; codes = projections above 0.5."""

    def __init__(self, P):
        self.P = P

    def encode(self, a):
        proj = a @ self.P.T
        return proj * (proj > 0.5)

    def decode(self, codes):
        return codes @ self.P

    @property
    def features(self):
        return self.P


@pytest.fixture(scope="module")
def world():
    train = balanced_prompts(2000, NAMES, seed=0)
    ev = balanced_prompts(100, NAMES, seed=1)
    planted = Planted(train)
    return train, ev, planted, planted.acts(train), planted.acts(ev)


def test_mean_and_mse_dictionaries_recover_planted_vectors(world):
    """MSE: exactly the centred planted vectors (up to noise). Mean: the same up to the small bias
    that S != IO induces (E[p_S | IO = v] depends on v, ~1/(m-1)) and sampling of the other attributes."""
    train, _, planted, a_train, _ = world
    for fit, tol, min_cos in ((fit_mse, 0.02, 0.999), (fit_mean, 0.3, 0.95)):
        d = fit(a_train, train)
        assert isinstance(d, Dictionary)
        for attr in ATTRIBUTES:
            off, n = d.offset(attr), len(d.values[attr])
            p = planted.P[off:off + n]
            want = p - p.mean(0)  # balanced attribute: centring removes the value-average
            got = d.U[off:off + n]
            rel = ((got - want).norm(dim=1) / want.norm(dim=1)).max()
            assert rel < tol, (fit.__name__, attr, rel)
            cos = torch.nn.functional.cosine_similarity(got, want, dim=1)
            assert cos.min() > min_cos, (fit.__name__, attr, cos.min())


def test_reconstruction_sufficiency_necessity_close_to_one(world):
    train, ev, planted, a_train, a_ev = world
    d = fit_mean(a_train, train)
    a_hat = d.reconstruct(ev)
    assert float(ap.fvu(a_ev, a_hat)) < 0.05
    # a "model" that, like a name mover, compares the activation with the prompt's own names:
    # LD = 3 <a, p_{S, s}> + 2 <a, p_{IO, io}>  (~5 on clean activations, ~0 on the mean)
    p_s = planted.P[torch.tensor([d.index("S", p.s) for p in ev])]
    p_io = planted.P[torch.tensor([d.index("IO", p.io) for p in ev])]
    readout = lambda a: 3 * (a * p_s).sum(1) + 2 * (a * p_io).sum(1)  # noqa: E731
    center = a_train.mean(0)
    ld_clean, ld_recon = readout(a_ev), readout(a_hat)
    ld_abl = readout(center.expand_as(a_ev))
    ld_int = readout(center + a_ev - a_hat)
    assert ld_clean.mean() > 4.5 and ld_abl.mean().abs() < 1.0
    assert float(ap.sufficiency(ld_clean, ld_recon)) == pytest.approx(1.0, abs=0.02)
    assert float(ap.necessity(ld_clean, ld_abl, ld_int)) == pytest.approx(1.0, abs=0.05)
    assert float(ap.ld_recovered(ld_clean, ld_abl, ld_recon)) == pytest.approx(1.0, abs=0.05)
    # a dictionary that explains nothing: reconstruction = mean -> LD recovered 0, necessity 0
    assert float(ap.ld_recovered(ld_clean, ld_abl, ld_abl)) == pytest.approx(0.0, abs=1e-6)
    assert float(ap.necessity(ld_clean, ld_abl, readout(a_ev))) == pytest.approx(0.0, abs=1e-6)


def test_planted_sae_scores_f1_one_everywhere(world):
    train, _, planted, a_train, _ = world
    sae = PlantedSAE(planted.P)
    codes = sae.encode(a_train)
    assert float(ap.l0(codes)) == pytest.approx(3.0)
    values = planted.values
    v_idx = labels(train, values)
    for frac in (0.0, 0.5):  # the paper's rule (code > 0), and the stricter relative one
        active = it.active_pattern(codes, frac)
        for attr in ATTRIBUTES:
            masks = it.value_masks(v_idx[attr], len(values[attr]))
            p, r, f1 = it.precision_recall_f1(active, masks)
            best, idx = it.best_f1_per_value(f1)
            assert torch.allclose(best, torch.ones_like(best)), (frac, attr)
            assert torch.equal(idx, torch.arange(len(values[attr])) + sum(len(values[a]) for a in ATTRIBUTES[:ATTRIBUTES.index(attr)]))
            assert it.coverage(f1, 0.99) == 1.0


def test_planted_sae_edits_swap_exactly_the_planted_features(world):
    train, ev, planted, a_train, a_ev = world
    import random

    sae = PlantedSAE(planted.P)
    values = planted.values
    rng = random.Random(0)
    pool = NAMES  # names may repeat across pools in this synthetic test; counterfactual() avoids the prompt's own
    v_train = labels(train, values)
    codes_train = sae.encode(a_train)
    for attr in ATTRIBUTES:
        cf = [counterfactual(p, attr, rng, pool) for p in ev]
        a_cf = planted.acts(cf)
        f_src, f_cf = sae.encode(a_ev), sae.encode(a_cf)
        delta, chosen = ct.greedy_edit(f_src, f_cf, sae.features, a_cf - a_ev, k=2)
        off = sum(len(values[a]) for a in ATTRIBUTES[:ATTRIBUTES.index(attr)])
        v_src = labels(ev, values)[attr] + off
        v_cf = labels(cf, values)[attr] + off
        want = torch.zeros_like(chosen)
        want[torch.arange(len(ev)), v_src] = True
        want[torch.arange(len(ev)), v_cf] = True
        assert torch.equal(chosen, want), attr
        assert (a_ev + delta - a_cf).norm(dim=1).max() < 0.5
        # F1-guided: F1 of "code > 0" on the train prompts
        masks = it.value_masks(v_train[attr], len(values[attr]))
        f1 = it.precision_recall_f1(codes_train > 0, masks)[2]
        d2, removed, added = ct.f1_edit(f_src, f_cf, sae.features, f1, labels(ev, values)[attr], labels(cf, values)[attr], k=1)
        assert torch.equal(removed.nonzero()[:, 1], v_src) and torch.equal(added.nonzero()[:, 1], v_cf)
        assert torch.allclose(d2, delta, atol=1e-5)
        # the removed feature carries about a third of the reconstruction (3 equal-norm planted vectors)
        w = ct.feature_weights(f_src, sae.features, torch.zeros(D))
        assert torch.allclose(w.sum(1), torch.ones(len(ev)), atol=1e-4)
        assert float(ct.edit_magnitude(w, removed)) == pytest.approx(1 / 3, abs=0.05)


def test_supervised_edit_moves_to_counterfactual(world):
    import random

    train, ev, planted, a_train, a_ev = world
    d = fit_mean(a_train, train)
    rng = random.Random(1)
    for attr in ATTRIBUTES:
        cf = [counterfactual(p, attr, rng, NAMES) for p in ev]
        a_cf = planted.acts(cf)
        edited = d.edit(a_ev, ev, cf, attr)
        assert (edited - a_cf).norm(dim=1).max() < 0.5
        # the read-out of the edited activation has the counterfactual value
        codes = d.encode(edited)
        off = d.offset(attr)
        got = codes[:, off:off + len(d.values[attr])].argmax(1)
        want = torch.tensor([d.values[attr].index(getattr(p, {"IO": "io", "S": "s", "Pos": "pos"}[attr])) for p in cf])
        assert torch.equal(got, want)


def _read(d, codes, attr):
    off = d.offset(attr)
    return codes[:, off:off + len(d.values[attr])].argmax(1)


def _truth(d, prompts, attr):
    return torch.tensor([d.values[attr].index(getattr(p, {"IO": "io", "S": "s", "Pos": "pos"}[attr])) for p in prompts])


def test_joint_read_out_reads_a_weak_attribute_beside_a_strong_one():
    """IO's vectors 20x longer than S's and not orthogonal to them: read alone, S follows IO's vector
    (the nearest S value to u_IO + u_S is the one most aligned with u_IO); read jointly, S is exact and
    the codes reconstruct at least as well as the per-attribute ones."""
    train = balanced_prompts(1200, NAMES, seed=0)
    values = attribute_values(train)
    g = torch.Generator().manual_seed(3)
    n_io, n_s = len(values["IO"]), len(values["S"])
    u_io = 20 * torch.nn.functional.normalize(torch.randn(n_io, D, generator=g), dim=1)
    u_s = torch.nn.functional.normalize(torch.randn(n_s, D, generator=g), dim=1)
    u_pos = 3 * torch.nn.functional.normalize(torch.randn(2, D, generator=g), dim=1)
    P = torch.cat([u_io, u_s, u_pos])
    acts = one_hot_codes(train, values) @ P + 0.01 * torch.randn(len(train), D, generator=g)
    d = fit_mse(acts, train)
    joint = d.encode(acts)
    alone = torch.cat([torch.nn.functional.one_hot(d.read_alone(acts - d.center, a), len(d.values[a])) for a in d.values], 1).to(acts)
    for attr in ATTRIBUTES:
        assert torch.equal(_read(d, joint, attr), _truth(d, train, attr)), attr
    assert float((_read(d, alone, "S") == _truth(d, train, "S")).float().mean()) < 0.5  # the failure the joint read-out fixes
    assert float(ap.fvu(acts, d.decode(joint))) <= float(ap.fvu(acts, d.decode(alone)))


@pytest.mark.parametrize("kind", ["mean", "mse"])
def test_a_frame_per_block_adds_nothing_to_the_fitted_vectors(kind):
    """Activations = a large vector per frame + planted name vectors. Fitted on prompts whose blocks share
    a frame (the fit split), the dictionary is exactly the one fitted without the frames' vectors: every
    name meets the same frames as IO and as S. With a frame per prompt (the train design) the frames
    move every vector, which is the noise the fit split removes (docs/ioi.md, "How many prompts")."""
    from evals.dictionary import FITS

    names = NAMES[:12]  # m even: Pos is ABB for exactly half of every block
    g = torch.Generator().manual_seed(0)
    moved = {}
    for shared in (True, False):
        ps = balanced_prompts(2 * 12 * 11, names, seed=1, frame_per_block=shared)
        frames = sorted({(p.frame, p.place, p.obj) for p in ps})
        assert (len(frames) == 2 * 11) if shared else (len(frames) > 200)
        f_vec = 5 * torch.randn(len(frames), D, generator=g)
        frame_of = torch.tensor([frames.index((p.frame, p.place, p.obj)) for p in ps])
        planted = Planted(ps).acts(ps)
        with_frames, without = FITS[kind](planted + f_vec[frame_of], ps), FITS[kind](planted, ps)
        moved[shared] = float((with_frames.U - without.U).abs().max())
    assert moved[True] < 1e-4 and moved[False] > 0.5, moved


@pytest.mark.parametrize("kind", ["mean", "mse"])
def test_the_harness_fits_vectors_on_the_fit_split_and_takes_the_center_from_the_train_prompts(kind):
    from types import SimpleNamespace

    from evals.dictionary import FITS
    from evals.harness import _fit_supervised

    fit_ps, train_ps = balanced_prompts(240, NAMES[:12], seed=1, frame_per_block=True), balanced_prompts(240, NAMES[:12], seed=0)
    g = torch.Generator().manual_seed(0)
    fit_a, train_a = torch.randn(240, D, generator=g), 3 + torch.randn(240, D, generator=g)
    split = SimpleNamespace(fit={"L": fit_a}, train={"L": train_a}, splits=SimpleNamespace(fit=fit_ps, fit_prompts=fit_ps))
    d = _fit_supervised(split, kind, "L", ATTRIBUTES)
    assert torch.allclose(d.center, train_a.mean(0)) and torch.allclose(d.U, FITS[kind](fit_a, fit_ps).U)
    alone = SimpleNamespace(fit={"L": train_a}, train={"L": train_a}, splits=SimpleNamespace(fit=None, fit_prompts=train_ps))
    d = _fit_supervised(alone, kind, "L", ATTRIBUTES)  # --n-fit 0: everything from the train prompts
    assert torch.allclose(d.center, train_a.mean(0)) and torch.allclose(d.U, FITS[kind](train_a, train_ps).U)
    with pytest.raises(ConfigError, match="unknown supervised dictionary kind 'median'; known: mean, mse"):
        _fit_supervised(split, "median", "L", ATTRIBUTES)


def test_left_out_read_out_is_at_chance_where_the_activations_carry_nothing():
    """Pure noise activations: a dictionary reads its own train prompts above chance (its vectors lean
    towards them) but every prompt read by the dictionary fitted without it is at chance (1/20 names)."""
    from evals.dictionary import loo_encode

    train = balanced_prompts(800, NAMES, seed=0)
    acts = torch.randn(len(train), 256, generator=torch.Generator().manual_seed(0))
    for kind, fit in (("mean", fit_mean), ("mse", fit_mse)):
        d = fit(acts, train)
        in_sample = float((_read(d, d.encode(acts), "IO") == _truth(d, train, "IO")).float().mean())
        held = loo_encode(kind, acts, train, d.values)
        assert held.shape == (len(train), d.U.shape[0])
        assert torch.equal(held.sum(1), torch.full((len(train),), 3.0))  # one value per attribute
        left_out = float((_read(d, held, "IO") == _truth(d, train, "IO")).float().mean())
        assert in_sample > 0.5, (kind, in_sample)
        assert left_out < 0.05 + 3 * (0.05 * 0.95 / len(train)) ** 0.5, (kind, left_out)


def _names_read(d, codes, i):
    return {(a, v) for a, vals in d.values.items() for k, v in enumerate(vals) if codes[i, d.offset(a) + k] > 0}


@pytest.mark.parametrize("kind", ["mean", "mse"])
@pytest.mark.parametrize("design", ["balanced", "with a prompt of its own"])
def test_left_out_read_out_equals_a_refit_without_the_prompt(kind, design):
    """Prompt i is read by exactly the dictionary fitted on the other prompts (center and vectors), though
    no refit is made (rank-one updates); in the second design one prompt's IO and S occur nowhere else
    (the refit has no vector for them: that prompt reads other values, and every other prompt's fit
    leaves the pair's split unidentified but must still match the refit's minimum-norm choice)."""
    from evals.dictionary import FITS, loo_encode

    train = balanced_prompts(36, NAMES[:12], seed=2)
    if design != "balanced":
        train = train + balanced_prompts(1, NAMES[12:14], seed=1)
    values = attribute_values(train)
    for seed in range(3):  # small d: reads near a tie, where a wrong update would show
        g = torch.Generator().manual_seed(seed)
        P = 0.4 * torch.randn(sum(len(v) for v in values.values()), 16, generator=g)
        acts = one_hot_codes(train, values) @ P + torch.randn(len(train), 16, generator=g)
        full = FITS[kind](acts, train)
        got = loo_encode(kind, acts, train, values)
        for i in range(len(train)):
            rest = [j for j in range(len(train)) if j != i]
            d = FITS[kind](acts[rest], [train[j] for j in rest], list(values))
            assert _names_read(d, d.encode(acts[i: i + 1]), 0) == _names_read(full, got, i), (seed, i, train[i])


def test_left_out_read_out_refuses_bad_input_with_a_clear_error():
    from evals.dictionary import loo_encode

    train = balanced_prompts(40, NAMES, seed=0)
    acts = torch.randn(len(train), 8)
    values = attribute_values(train)
    with pytest.raises(ConfigError, match="unknown supervised dictionary kind 'median'"):
        loo_encode("median", acts, train, values)
    with pytest.raises(ConfigError, match=r"1 prompts, activations of shape \(1, 8\)"):
        loo_encode("mean", acts[:1], train[:1], values)
    with pytest.raises(ConfigError, match=r"40 prompts, activations of shape \(39, 8\)"):
        loo_encode("mean", acts[:39], train, values)


def test_read_z_measures_accuracy_above_chance_in_standard_errors():
    """Exact read: z = (1 - e) / sqrt(e (1 - e) / N) with e = sum_v p_v^2; a read that is always wrong is
    below chance; a prompt with nothing read counts as wrong."""
    from evals.dictionary import read_z

    train = balanced_prompts(400, NAMES, seed=1)
    values = attribute_values(train)
    truth = one_hot_codes(train, values)
    z = read_z(truth, train, values)
    for attr in ATTRIBUTES:
        p = torch.bincount(labels(train, values)[attr], minlength=len(values[attr])).float() / len(train)
        e = float((p * p).sum())
        assert z[attr] == pytest.approx((1 - e) / (e * (1 - e) / len(train)) ** 0.5, rel=1e-5), attr
    off = {a: sum(len(values[b]) for b in list(values)[:list(values).index(a)]) for a in values}
    wrong = torch.zeros_like(truth)
    for attr, vals in values.items():  # always the next value: never right, read as often as the truth
        idx = (labels(train, values)[attr] + 1) % len(vals)
        wrong[torch.arange(len(train)), off[attr] + idx] = 1.0
    assert all(v < -3 for v in read_z(wrong, train, values).values())
    none = truth.clone()
    none[:200] = 0.0  # half the prompts read nothing: accuracy 0.5, values read only on the other half
    t = labels(train, values)["Pos"]
    e = float((torch.bincount(t, minlength=2).float() / 400 * torch.bincount(t[200:], minlength=2).float() / 400).sum())
    assert read_z(none, train, values)["Pos"] == pytest.approx((0.5 - e) / (e * (1 - e) / 400) ** 0.5, rel=1e-5)

    with pytest.raises(ConfigError, match=r"codes of shape \(399, 42\) for 400 prompts and 42 attribute values"):
        read_z(truth[1:], train, values)
    with pytest.raises(ConfigError, match="n_prompts >= 1"):
        read_z(truth[:0], [], values)


@pytest.mark.parametrize("kind", ["mean", "mse"])
def test_read_z_of_left_out_read_outs_tells_carried_attributes_from_absent_ones(kind):
    """S planted strongly, IO weakly (0.15 against noise of norm 1), Pos not at all: the left-out
    read-out is above chance (z >= READ_Z) for S and IO, though IO is read wrong on most prompts, and
    at chance for Pos; on pure noise every attribute is at chance."""
    from evals.dictionary import READ_Z, loo_encode, read_z

    train = balanced_prompts(3000, NAMES, seed=4)
    values = attribute_values(train)
    g = torch.Generator().manual_seed(7)
    scale = {"IO": 0.15, "S": 3.0, "Pos": 0.0}
    P = torch.cat([scale[a] * torch.nn.functional.normalize(torch.randn(len(v), D, generator=g), dim=1)
                   for a, v in values.items()])
    acts = one_hot_codes(train, values) @ P + torch.randn(len(train), D, generator=g) / D ** 0.5
    codes = loo_encode(kind, acts, train, values)
    z = read_z(codes, train, values)
    assert z["S"] > 100 and READ_Z <= z["IO"] and z["Pos"] < READ_Z, z
    d = fit_mean(acts, train)
    assert float((_read(d, codes, "IO") == _truth(d, train, "IO")).float().mean()) < 0.5
    noise = torch.randn(len(train), D, generator=g)
    z = read_z(loo_encode(kind, noise, train, values), train, values)
    assert max(z.values()) < READ_Z, z
