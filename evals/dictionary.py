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
the interface holds, and :func:`crossfit_encode` reads each prompt with a dictionary fitted without it.
"""

from __future__ import annotations

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
    rows, cols, off = [], [], 0
    for a, vals in values.items():
        idx = {v: off + i for i, v in enumerate(vals)}
        for r, p in enumerate(prompts):
            j = idx.get(attribute_value(p, a))
            if j is not None:
                rows.append(r)
                cols.append(j)
        off += len(vals)
    c = torch.zeros(len(prompts), off)
    c[torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)] = 1.0  # one scatter, not N x attrs writes
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
        off = self.offset(attr)
        u = self.U[off: off + len(self.values[attr])]  # (n_v, d)
        return (x @ u.T - 0.5 * (u * u).sum(1)).argmax(1)  # argmax <x,u> - |u|^2/2 = argmin |x - u|

    def encode(self, a: torch.Tensor, max_sweeps: int = 20) -> torch.Tensor:
        """Read-out from activations: one value per attribute, chosen so that their vectors together
        reconstruct ``a`` best (min ||a - center - sum_i u_{i,v_i}||), by coordinate descent: start from
        each attribute's nearest value alone, then re-read one attribute at a time against what the
        others leave, until a sweep changes nothing (a local optimum; at most ``max_sweeps``).

        Reading each attribute alone treats the other attributes' vectors as noise: where one attribute
        dominates a location the weak one's read-out follows the fit's sampling noise and does not settle
        as the train set grows (docs/ioi.md, "How many prompts").
        """
        x = a.to(self.U) - self.center  # (N, d)
        rows = torch.arange(len(a), device=self.U.device)
        blocks = {attr: (self.offset(attr), len(vals)) for attr, vals in self.values.items()}
        pick = {attr: self.read_alone(x, attr) for attr in blocks}  # attr -> (N,) value index within its block
        for _ in range(max_sweeps):
            changed = False
            for attr, (off, _) in blocks.items():
                rest = x - sum(self.U[o + pick[b]] for b, (o, _) in blocks.items() if b != attr)
                new = self.read_alone(rest, attr)
                changed |= bool((new != pick[attr]).any())
                pick[attr] = new
            if not changed:
                break
        out = torch.zeros(len(a), self.U.shape[0], device=self.U.device, dtype=self.U.dtype)
        for attr, (off, _) in blocks.items():
            out[rows, off + pick[attr]] = 1.0
        return out

    def edit(self, a: torch.Tensor, src: Sequence[toyworld.IOIPrompt], cf: Sequence[toyworld.IOIPrompt], attr: str) -> torch.Tensor:
        """The supervised edit (paper Sec. 4): ``a - u_{i,v} + u_{i,v'}`` with v, v' the source / cf values."""
        return a - self.vectors(attr, src) + self.vectors(attr, cf)


def fit_mean(acts: torch.Tensor, prompts: Sequence[toyworld.IOIPrompt], attrs: Sequence[str] = ATTRIBUTES) -> SupervisedDictionary:
    """Mean dictionary: ``u_{i,v} = mean(a | a_i = v) - mean(a)`` over the train prompts. acts: (N, d)."""
    values = attribute_values(prompts, attrs)
    center = acts.mean(0)
    c = one_hot_codes(prompts, values).to(acts)  # (N, n_values)
    counts = c.sum(0).clamp_min(1)
    U = (c.T @ acts) / counts[:, None] - center
    return SupervisedDictionary("mean", center, U, values)


def fit_mse(acts: torch.Tensor, prompts: Sequence[toyworld.IOIPrompt], attrs: Sequence[str] = ATTRIBUTES) -> SupervisedDictionary:
    """MSE dictionary: ``U = lstsq(C, A - mean(A))`` (minimum-norm; C's blocks are collinear)."""
    values = attribute_values(prompts, attrs)
    center = acts.mean(0)
    c = one_hot_codes(prompts, values).to(acts)
    U = torch.linalg.pinv(c.double()) @ (acts - center).double()
    return SupervisedDictionary("mse", center, U.to(acts), values)


FITS = {"mean": fit_mean, "mse": fit_mse}


def crossfit_encode(kind: str, acts: torch.Tensor, prompts: Sequence[toyworld.IOIPrompt], values: dict[str, list[str]],
                    folds: int = 5) -> torch.Tensor:
    """(N, n_values) read-out codes of a ``kind`` ("mean"/"mse") dictionary, each prompt read by one fitted
    on the other folds (prompt i is in fold i mod ``folds``); columns in the order of ``values``.

    A dictionary reads the prompts it was fitted on too well (its vectors lean towards them): at 3,000
    train prompts the in-sample F1 of a weak location's values was twice the held-out one. Cross-fitting
    scores what the dictionary would read on fresh prompts, which is what a larger train set converges to.
    """
    n = len(prompts)
    if kind not in FITS:
        raise ConfigError(f"unknown supervised dictionary kind {kind!r}; known: {', '.join(FITS)}")
    if folds < 2 or n < 2 * folds:
        raise ConfigError(f"cross-fitting needs at least 2 folds of 2 prompts ({n} prompts, {folds} folds)")
    col = {(a, v): j for j, (a, v) in enumerate((a, v) for a, vals in values.items() for v in vals)}
    out = torch.zeros(n, len(col), device=acts.device, dtype=acts.dtype)
    fold = torch.arange(n, device=acts.device) % folds
    for f in range(folds):
        held, fit_on = (fold == f).nonzero().squeeze(1), (fold != f).nonzero().squeeze(1)
        d = FITS[kind](acts[fit_on], [prompts[i] for i in fit_on.tolist()], list(values))
        codes = d.encode(acts[held])  # (n_held, the fold dictionary's values)
        cols = torch.tensor([col.get((a, v), -1) for a, vals in d.values.items() for v in vals], device=acts.device)
        keep = cols >= 0  # a value the full train set has but this fold's does not stays unread
        out[held[:, None], cols[keep][None, :]] = codes[:, keep].to(out)
    return out


READ_Z = 4.0  # a read-out of an attribute is "above chance" where its accuracy beats chance by this many standard errors


def read_z(codes: torch.Tensor, prompts: Sequence[toyworld.IOIPrompt], values: dict[str, list[str]]) -> dict[str, float]:
    """attr -> how far the read-out's accuracy on ``prompts`` is above chance, in standard errors:
    ``(acc - e) / sqrt(e (1 - e) / N)`` with ``e = sum_v p_v q_v`` the accuracy of a read-out that is
    independent of the truth but reads each value as often (p: true frequencies, q: read frequencies).
    Meaningful for codes read without the prompts' own labels (:func:`crossfit_encode`): below
    ``READ_Z`` the location does not carry the attribute as far as the dictionary can tell, and the F1
    of its features for that attribute is chance level (about 0.5 for the two values of Pos).
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
