"""The ``Dictionary`` interface, the supervised dictionaries, and loading SAEs as dictionaries.

A dictionary explains activations ``a: (N, d)`` as ``a_hat = decode(encode(a))`` with
``decode(codes) = bias + codes @ features`` for codes ``(N, n_features)`` and decoder vectors
``features: (n_features, d)``. SAEs from ``sae/`` satisfy it as they are; the supervised dictionaries
of Makelov et al. (2024, Sec. 3) satisfy it with one feature per attribute value:

- mean dictionary: ``u_{i,v} = mean(a | a_i = v) - mean(a)`` and ``a_hat = mean(a) + sum_i u_{i, v_i}``;
- MSE dictionary: with the one-hot attribute design matrix ``C (N, n_values)``,
  ``U = argmin ||C U - (A - mean(A))||^2`` (least squares, minimum-norm solution).

By default the attributes are the paper's IO, S, Pos; ``attrs`` may add ``Template`` (a nuisance
attribute: our templates differ in length, so a position's absolute index, and with it the position
embedding, depends on the template). Their "true" codes come from the labels (:meth:`SupervisedDictionary.codes_for`), not from
activations; ``encode`` is a read-out (the values that together reconstruct an activation best) so
the interface holds, and :func:`loo_encode` reads each prompt with a dictionary fitted without it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import torch

from evals.data import ATTRIBUTES, POS_VALUES, attribute_value, labels
from evals.locations import Location
from workbench import toyworld
from workbench.errors import ConfigError, RunError


@runtime_checkable
class Dictionary(Protocol):
    def encode(self, a: torch.Tensor) -> torch.Tensor:
        """(N, d) activations -> (N, n_features) codes."""

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(N, n_features) codes -> (N, d) reconstruction."""

    @property
    def features(self) -> torch.Tensor:
        """(n_features, d) decoder vectors."""


def bias_of(d: Dictionary) -> torch.Tensor:
    """(d,) the reconstruction of all-zero codes (b_dec for an SAE, the mean for a supervised one)."""
    return d.decode(torch.zeros(1, d.features.shape[0], device=d.features.device, dtype=d.features.dtype))[0]


def attribute_values(prompts: Sequence[toyworld.IOIPrompt], attrs: Sequence[str] = ATTRIBUTES) -> dict[str, list[str]]:
    """attr -> the sorted values that occur in prompts (Pos always ABB, BAB)."""
    attrs = list(attrs)
    return {a: list(POS_VALUES) if a == "Pos" else sorted({attribute_value(p, a) for p in prompts}) for a in attrs}


def one_hot_codes(prompts: Sequence[toyworld.IOIPrompt], values: dict[str, list[str]]) -> torch.Tensor:
    """(N, sum_i |values_i|) one-hot design matrix C; a value not in `values` gets an all-zero block."""
    c = torch.zeros(len(prompts), sum(len(v) for v in values.values()))
    off = 0
    for a, idx in labels(prompts, values).items():  # attr -> (N,) index in values[a], -1 if not listed
        rows = (idx >= 0).nonzero().squeeze(1)
        c[rows, off + idx[rows]] = 1.0  # one scatter per attribute
        off += len(values[a])
    return c


@dataclass
class SupervisedDictionary:
    """``a_hat = center + sum_i U[(i, v_i)]``: one decoder vector per (attribute, value)."""

    kind: str  # "mean" or "mse"
    center: torch.Tensor  # (d,) mean activation over the train prompts
    U: torch.Tensor  # (n_values, d), rows ordered attribute by attribute as in `values`
    values: dict[str, list[str]]  # attr -> its values (row order within the attribute's block)

    @property
    def features(self) -> torch.Tensor:
        return self.U

    def offset(self, attr: str) -> int:
        off = 0
        for a, vals in self.values.items():
            if a == attr:
                return off
            off += len(vals)
        raise KeyError(attr)

    def index(self, attr: str, value: str) -> int:
        """Row of U that holds u_{attr, value}."""
        try:
            return self.offset(attr) + self.values[attr].index(value)
        except ValueError:
            raise ConfigError(f"{attr}={value!r} never occurs in the train prompts; the supervised dictionary has no vector for it") from None

    def vectors(self, attr: str, prompts: Sequence[toyworld.IOIPrompt]) -> torch.Tensor:
        """(N, d) u_{attr, v(prompt)} for each prompt."""
        rows = torch.tensor([self.index(attr, attribute_value(p, attr)) for p in prompts], device=self.U.device)
        return self.U[rows]

    def codes_for(self, prompts: Sequence[toyworld.IOIPrompt]) -> torch.Tensor:
        """(N, n_values) the supervised codes: one-hot of each prompt's attribute values."""
        return one_hot_codes(prompts, self.values).to(self.U)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.center + codes.to(self.U) @ self.U

    def reconstruct(self, prompts: Sequence[toyworld.IOIPrompt]) -> torch.Tensor:
        """(N, d) a_hat = center + sum_i u_{i, v_i(prompt)}."""
        return self.decode(self.codes_for(prompts))

    def read_alone(self, x: torch.Tensor, attr: str) -> torch.Tensor:
        """(N,) index within attr's block of the value v minimising ||x - u_{attr,v}|| (x: centred, (N, d))."""
        return joint_read(x.to(self.U), self.U, {attr: self.blocks()[attr]}, max_sweeps=0)[attr]

    def encode(self, a: torch.Tensor, max_sweeps: int = 20) -> torch.Tensor:
        """Read-out from activations: one value per attribute, chosen so that their vectors together
        reconstruct ``a`` best (min ||a - center - sum_i u_{i,v_i}||), by coordinate descent: start from
        each attribute's nearest value alone, then re-read one attribute at a time against what the
        others leave, until a sweep changes nothing (a local optimum; at most ``max_sweeps``).

        Reading each attribute alone treats the other attributes' vectors as noise: where one attribute
        dominates a location the weak one's read-out follows the fit's sampling noise and does not settle
        as the train set grows (docs/ioi.md, "How many prompts").
        """
        return self._codes(joint_read(a.to(self.U) - self.center, self.U, self.blocks(), max_sweeps=max_sweeps))

    def blocks(self) -> dict[str, tuple[int, int]]:
        """attr -> (first row of its block in U, number of values)."""
        return {attr: (self.offset(attr), len(vals)) for attr, vals in self.values.items()}

    def _codes(self, pick: dict[str, torch.Tensor]) -> torch.Tensor:
        """(N, n_values) one-hot codes from attr -> (N,) value index within the attribute's block."""
        n = len(next(iter(pick.values())))
        out = torch.zeros(n, self.U.shape[0], device=self.U.device, dtype=self.U.dtype)
        rows = torch.arange(n, device=self.U.device)
        for attr, (off, _) in self.blocks().items():
            out[rows, off + pick[attr]] = 1.0
        return out

    def edit(self, a: torch.Tensor, src: Sequence[toyworld.IOIPrompt], cf: Sequence[toyworld.IOIPrompt], attr: str) -> torch.Tensor:
        """The supervised edit (paper Sec. 4): ``a - u_{i,v} + u_{i,v'}`` with v, v' the source / cf values."""
        return a - self.vectors(attr, src) + self.vectors(attr, cf)


def fit_mean(acts: torch.Tensor, prompts: Sequence[toyworld.IOIPrompt], attrs: Sequence[str] = ATTRIBUTES) -> SupervisedDictionary:
    """Mean dictionary: ``u_{i,v} = mean(a | a_i = v) - mean(a)`` over the train prompts. acts: (N, d)."""
    values = attribute_values(prompts, attrs)
    return _fit_mean(acts, one_hot_codes(prompts, values).to(acts), values)


def fit_mse(acts: torch.Tensor, prompts: Sequence[toyworld.IOIPrompt], attrs: Sequence[str] = ATTRIBUTES) -> SupervisedDictionary:
    """MSE dictionary: ``U = lstsq(C, A - mean(A))`` (minimum-norm; C's blocks are collinear)."""
    values = attribute_values(prompts, attrs)
    return _fit_mse(acts, one_hot_codes(prompts, values).to(acts), values)


def _fit_mean(acts: torch.Tensor, c: torch.Tensor, values: dict[str, list[str]]) -> SupervisedDictionary:
    """The mean dictionary from activations (N, d) and their one-hot design C (N, n_values)."""
    center = acts.mean(0)
    counts = c.sum(0).clamp_min(1)
    U = (c.T @ acts) / counts[:, None] - center
    return SupervisedDictionary("mean", center, U, values)


def _fit_mse(acts: torch.Tensor, c: torch.Tensor, values: dict[str, list[str]]) -> SupervisedDictionary:
    """The MSE dictionary from (acts, C): ``pinv(C) Y = pinv(C^T C) C^T Y`` with Y the centred activations,
    solved on the (n_values, n_values) Gram matrix (its entries are counts, exact in double) rather than by
    an SVD of the (N, n_values) design: the same minimum-norm solution, ~N / n_values times less work."""
    center = acts.mean(0)
    c = c.double()
    gram = c.T @ c  # (n_values, n_values)
    U = torch.linalg.pinv(gram, hermitian=True) @ (c.T @ (acts - center).double())
    return SupervisedDictionary("mse", center, U.to(acts), values)


FITS = {"mean": fit_mean, "mse": fit_mse}
_FIT_CODES = {"mean": _fit_mean, "mse": _fit_mse}


def fit_centred_on(kind: str, acts: torch.Tensor, prompts: Sequence[toyworld.IOIPrompt], attrs: Sequence[str],
                   center_acts: torch.Tensor | None = None) -> SupervisedDictionary:
    """The ``kind`` dictionary's vectors fitted on (acts, prompts); its center the mean of ``center_acts``
    (N', d) when given. With a fit split (:mod:`evals.data`) the vectors are differences between values, in
    which the block-shared frames cancel, but the split's own mean rests on one frame per block: the train
    prompts' mean (a frame each) is the better center."""
    if kind not in FITS:
        raise ConfigError(f"unknown supervised dictionary kind {kind!r}; known: {', '.join(FITS)}")
    d = FITS[kind](acts, prompts, attrs)
    return d if center_acts is None else dataclasses.replace(d, center=center_acts.mean(0).to(d.center))


def joint_read(x: torch.Tensor, U: torch.Tensor, blocks: dict[str, tuple[int, int]], P: torch.Tensor | None = None,
               Q: torch.Tensor | None = None, ban: torch.Tensor | None = None, max_sweeps: int = 20) -> dict[str, torch.Tensor]:
    """attr -> (N,) the value index within each block that together reconstruct the centred ``x`` (N, d)
    best, by the coordinate descent of :meth:`SupervisedDictionary.encode`.

    ``U`` (n_values, d): the vectors. Optionally each prompt n has its own vectors ``U + P[n] @ Q[n]``
    (P: (N, n_values, R), Q: (N, R, d); a rank-R change, as leaving prompt n out of the fit makes) and
    ``ban`` (N, n_values) marks values prompt n cannot read (its dictionary has no vector for them).
    """
    rows = torch.arange(len(x), device=x.device)
    sq = (U * U).sum(1).expand(len(x), -1)  # (N, n_values) |u_v|^2 of each prompt's vectors
    if P is not None:
        UQ = torch.einsum("vd,nrd->nvr", U, Q)
        QQ = torch.einsum("nrd,nsd->nrs", Q, Q)
        sq = sq + 2 * (P * UQ).sum(-1) + torch.einsum("nvr,nrs,nvs->nv", P, QQ, P)

    def vec(v: torch.Tensor) -> torch.Tensor:  # (N,) row of U -> (N, d) each prompt's vector
        return U[v] if P is None else U[v] + torch.einsum("nr,nrd->nd", P[rows, v], Q)

    def read(rest: torch.Tensor, off: int, n_v: int) -> torch.Tensor:  # argmax <rest, u> - |u|^2 / 2 = argmin |rest - u|
        score = rest @ U[off: off + n_v].T - 0.5 * sq[:, off: off + n_v]
        if P is not None:
            score = score + torch.einsum("nvr,nr->nv", P[:, off: off + n_v], torch.einsum("nd,nrd->nr", rest, Q))
        if ban is not None:
            score = score.masked_fill(ban[:, off: off + n_v], float("-inf"))
        return score.argmax(1)

    pick = {attr: read(x, off, n_v) for attr, (off, n_v) in blocks.items()}  # each attribute's nearest value alone
    for _ in range(max_sweeps):
        changed = False
        for attr, (off, n_v) in blocks.items():
            rest = x - sum(vec(o + pick[b]) for b, (o, _) in blocks.items() if b != attr)
            new = read(rest, off, n_v)
            changed |= bool((new != pick[attr]).any())
            pick[attr] = new
        if not changed:
            break
    return pick


def loo_encode(kind: str, acts: torch.Tensor, prompts: Sequence[toyworld.IOIPrompt], values: dict[str, list[str]]) -> torch.Tensor:
    """(N, n_values) read-out codes of a ``kind`` ("mean"/"mse") dictionary, each prompt read by the one
    fitted on all the other prompts (leave-one-out); columns in the order of ``values``.

    A dictionary reads the prompts it was fitted on too well (its vectors lean towards them): at 3,000
    train prompts the in-sample F1 of a weak location's values was twice the held-out one. Leaving one
    prompt out scores what the dictionary would read on fresh prompts, from a fit on all the others:
    removing one prompt changes the fit by a rank-one term (MSE, Sherman-Morrison) or moves the center
    and the prompt's own values' means (mean), so no refit is needed, and the fit keeps the train set's
    balance (K-fold cross-fitting broke it: :func:`evals.data.balanced_prompts`, docs/ioi.md). A value
    that only this prompt has cannot be read by it.
    """
    if kind not in FITS:
        raise ConfigError(f"unknown supervised dictionary kind {kind!r}; known: {', '.join(FITS)}")
    n = len(prompts)
    if n < 2 or acts.shape[0] != n:
        raise ConfigError(f"a leave-one-out read-out needs at least 2 prompts and one activation per prompt "
                          f"({n} prompts, activations of shape {tuple(acts.shape)})")
    c = one_hot_codes(prompts, values).to(acts)  # (N, n_values)
    d = _FIT_CODES[kind](acts, c, values)
    blocks = d.blocks()
    counts = c.sum(0)  # (n_values,)
    ban = (c > 0) & (counts <= 1)  # (N, n_values) a value only this prompt has
    x = acts - d.center  # (N, d)
    if kind == "mean":  # U_-i = U - delta_i (every row) + (M_v - a_i) / (n_v - 1) (own rows); target x_i - delta_i
        delta = (d.center - acts) / (n - 1)  # (N, d) center without prompt i minus center
        x = x - delta
        idx = torch.stack([off + c[:, off: off + n_v].argmax(1) for off, n_v in blocks.values()], 1)  # (N, A) own rows
        rows = torch.arange(n, device=acts.device)
        M = d.U + d.center  # (n_values, d) per-value means
        shrink = (counts[idx] - 1).clamp_min(1)[..., None]  # (N, A, 1)
        Q = torch.cat([-delta[:, None, :], (M[idx] - acts[:, None, :]) / shrink], 1)  # (N, 1 + A, d)
        P = torch.zeros(n, c.shape[1], 1 + len(blocks), device=acts.device, dtype=acts.dtype)
        P[:, :, 0] = 1.0
        for r in range(len(blocks)):
            P[rows, idx[:, r], 1 + r] = 1.0
        P = P * ~ban[..., None]  # a banned value keeps its full-fit vector; it is never read anyway
    else:  # Sherman-Morrison: the least squares fit without row i is U - g_i e_i^T, g_i = G^+ c_i / (1 - h_i) (G = C^T C,
        # e_i prompt i's residual, h_i its leverage); refitting on A_-i - center_-i subtracts z_-i delta_i^T more, with
        # z_-i = pinv(C_-i) 1 (how the fit spreads a constant over the values); target x_i - delta_i
        cd = c.double()
        Ginv = torch.linalg.pinv(cd.T @ cd, hermitian=True)
        Gc = cd @ Ginv  # (N, n_values) rows G^+ c_i
        h = (Gc * cd).sum(1)  # (N,)
        ok = h < 1 - 1e-6  # h = 1: prompt i's values are not in the span of the others' (a value of its own); refitted below
        g = torch.where(ok[:, None], Gc / (1 - h).clamp_min(1e-9)[:, None], torch.zeros_like(Gc))
        e = x.double() - cd @ d.U.double()  # (N, d)
        z = Ginv @ cd.sum(0)  # (n_values,) pinv(C) 1
        z_i = z - g * (1 - cd @ z)[:, None]  # (N, n_values)
        delta = (d.center - acts).double() / (n - 1)  # (N, d) center without prompt i minus center
        x = x - delta.to(x)
        P = torch.stack([g, z_i], -1).to(acts)  # (N, n_values, 2)
        Q = torch.stack([-e, -delta], 1).to(acts)  # (N, 2, d)
    pick = joint_read(x, d.U, blocks, P, Q, ban)
    codes = d._codes(pick)
    if kind == "mse":
        for i in (~ok).nonzero().squeeze(1).tolist():  # refit without prompt i; its own singleton values unread
            rest = torch.cat([torch.arange(i, device=acts.device), torch.arange(i + 1, n, device=acts.device)])
            cols = ((c[rest].sum(0) > 0)).nonzero().squeeze(1)
            keep, sub, j = set(cols.tolist()), {}, 0
            for a, vals in values.items():
                sub[a] = [v for k, v in enumerate(vals) if j + k in keep]
                j += len(vals)
            if any(not v for v in sub.values()):
                raise ConfigError(f"prompt {i} is the only one with every value of an attribute; pass more train prompts")
            di = _FIT_CODES[kind](acts[rest], c[rest][:, cols], sub)
            codes[i] = 0.0
            codes[i, cols] = di.encode(acts[i: i + 1])[0].to(codes)
    return codes


READ_Z = 4.0  # a read-out of an attribute is "above chance" where its accuracy beats chance by this many standard errors


def read_z(codes: torch.Tensor, prompts: Sequence[toyworld.IOIPrompt], values: dict[str, list[str]]) -> dict[str, float]:
    """attr -> how far the read-out's accuracy on ``prompts`` is above chance, in standard errors:
    ``(acc - e) / sqrt(e (1 - e) / N)`` with ``e = sum_v p_v q_v`` the accuracy of a read-out that is
    independent of the truth but reads each value as often (p: true frequencies, q: read frequencies).
    Meaningful for codes of prompts the dictionary was not fitted on (a fit split, or
    :func:`loo_encode`): below ``READ_Z`` the location does not carry the attribute as far as the
    dictionary can tell, and the F1 of its features for that attribute is chance level (about 0.5 for
    the two values of Pos).
    codes: (N, n_values) in the order of ``values``; a prompt with no value read counts as wrong."""
    n, out, off = len(prompts), {}, 0
    width = sum(len(v) for v in values.values())
    if n == 0 or tuple(codes.shape) != (n, width):
        raise ConfigError(f"read_z: codes of shape {tuple(codes.shape)} for {n} prompts and {width} attribute values; "
                          f"pass (n_prompts, n_values) codes, n_prompts >= 1, columns in the order of `values`")
    truth = labels(prompts, values)  # attr -> (N,) value index, -1 where not listed
    for attr, vals in values.items():
        block = codes[:, off: off + len(vals)].cpu()  # (N, n_v)
        off += len(vals)
        true = truth[attr]
        read = torch.where(block.sum(1) > 0, block.argmax(1), torch.full_like(true, -2))
        acc = float((read == true).float().mean())
        p_true = torch.bincount(true[true >= 0], minlength=len(vals)).float() / n
        q_read = torch.bincount(read[read >= 0], minlength=len(vals)).float() / n
        e = float((p_true * q_read).sum())
        out[attr] = (acc - e) / max(e * (1 - e) / n, 1e-12) ** 0.5
    return out


# ---- SAEs --------------------------------------------------------------------------------------

@dataclass
class LoadedSAE:
    """One SAE run as a dictionary, with the (hook, head) it was trained at."""

    path: str
    hook: str
    head: int | None
    arch: str
    dictionary: Dictionary
    meta: dict = field(default_factory=dict)  # k, d_sae, corpus, positions, ... (what cfg.json says)

    def covers(self, loc: Location) -> bool:
        return loc.hook == self.hook and loc.head == self.head


@dataclass
class SAEFamily:
    """SAEs evaluated together under one label: one SAE per (hook, head) of a cross-section."""

    label: str
    saes: list[LoadedSAE]

    def for_location(self, loc: Location) -> LoadedSAE | None:
        return next((s for s in self.saes if s.covers(loc)), None)

    def covers(self, locations: Sequence[Location]) -> bool:
        return all(self.for_location(loc) is not None for loc in locations)

    def describe(self) -> dict:
        return {"label": self.label, "saes": [{"path": s.path, "hook": s.hook, "head": s.head, "arch": s.arch, **s.meta}
                                              for s in self.saes]}


def _find_sae_dir(path: Path) -> Path:
    for cand in (path, path / "sae", path / "final"):
        if (cand / "cfg.json").is_file() and (cand / "sae_weights.safetensors").is_file():
            return cand
    raise RunError(f"{path}: no cfg.json + sae_weights.safetensors here (nor in {path / 'sae'}); "
                   "pass an SAE run directory written by `workbench sae train`")


def _run_meta(path: Path) -> dict:
    """corpus / positions / tokens from the SAE run's config.json, when there is one."""
    for p in (path / "config.json", path.parent / "config.json"):
        try:
            cfg = json.loads(p.read_text()).get("config", {})
        except (OSError, json.JSONDecodeError, AttributeError):
            continue
        acts = cfg.get("acts", {}) if isinstance(cfg, dict) else {}
        return {k: v for k, v in {"corpus": acts.get("corpus"), "positions": acts.get("positions"),
                                  "tokens": cfg.get("tokens")}.items() if v is not None}
    return {}


def load_sae(path: str | Path, device: str = "cpu") -> LoadedSAE:
    """Load an SAE run (SAELens layout: cfg.json + sae_weights.safetensors) through ``sae``'s loader."""
    try:
        import sae as sae_pkg
    except ImportError as e:  # the sae package is broken or absent: say so, evals itself still works
        raise RunError(f"cannot load SAEs: the `sae` package failed to import ({e})") from e
    path = Path(path)
    d = _find_sae_dir(path)
    loader = getattr(sae_pkg, "load", None)
    if loader is None:
        from sae.io import load as loader
    model = loader(d, device=device)
    model.eval()
    cfg = json.loads((d / "cfg.json").read_text())
    hook = cfg.get("hook_name")
    if not hook:
        raise RunError(f"{d / 'cfg.json'} has no hook_name; cannot tell which activations the SAE reads")
    head = cfg.get("hook_head_index")
    ours = cfg.get("workbench", {}).get("sae", {})
    meta = {"k": ours.get("k", cfg.get("k")), "d_sae": cfg.get("d_sae"), "d_in": cfg.get("d_in"), **_run_meta(path)}
    return LoadedSAE(str(path), hook, head, ours.get("arch", cfg.get("architecture", "?")), model, meta)


def parse_sae_arg(arg: str) -> tuple[str, list[str]]:
    """``PATH`` -> (basename, [PATH]); ``LABEL=P1,P2`` -> (LABEL, [P1, P2]) (one SAE per location)."""
    if "=" in arg:
        label, paths = arg.split("=", 1)
        return label, [p for p in paths.split(",") if p]
    return Path(arg.rstrip("/")).name, [arg]


def load_families(args: Sequence[str], device: str = "cpu") -> list[SAEFamily]:
    out = []
    for a in args:
        label, paths = parse_sae_arg(a)
        if label in ("mean", "mse") or label in {f.label for f in out}:
            raise ConfigError(f"sae: label {label!r} is taken (mean and mse are the supervised dictionaries; labels must be unique); "
                              "name the family with --sae LABEL=PATH")
        out.append(SAEFamily(label, [load_sae(p, device) for p in paths]))
    return out
