"""The interpretation space: what a feature may mean on the IOI prompts (paper Sec. 4.3).

A *kind* of interpretation is a set of values, each a 0/1 mask over the prompts ("the prompt has
this value"). A feature's interpretation is the (kind, value) whose mask its activation pattern
matches best by F1 (:mod:`evals.interpretability`). The kinds, following the authors' code
(amakelov/sae: circuit_utils.py ``FEATURE_SIZES``, ``FEATURE_SUBSETS``, ``get_prompt_representation``;
sae_interp.py ``get_feature_mask``, ``autointerp_fast``):

- single attributes (:data:`evals.data.PROMPT_ATTRIBUTES`): ``IO``, ``S``, ``Pos`` (the paper's),
  ``A`` / ``B`` (first / second name of the opening clause; the authors' name1 / name2),
  ``IO gender`` / ``S gender`` (from ``workbench.toyworld.GENDER``; absent until the toy world
  carries genders), ``Place``, ``Object``, ``Template``;
- ``Name``: the name occurs in the prompt, as IO or as S (the authors' name_anywhere);
- intersections with Pos: ``IO & Pos``, ``S & Pos`` (values such as ``Mary & ABB``; the authors'
  ``('io', 'io_pos')`` and ``('s', 'io_pos')``);
- unions: ``IO union``, ``S union``: the prompt's IO (S) is one of up to 10 names, grown per
  feature in the order of the names' own F1 (``autointerp_fast`` with ``features_to_group`` =
  io, s and ``max_group_size=10``). A union of one name is the single value, so a union kind never
  scores below its attribute.

A kind with fewer than two values on the prompts (a gender with no gender table) is left out and
listed in :attr:`Scores.skipped`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from evals import interpretability as it
from evals.config import KINDS  # noqa: F401 - the kinds' names live with the config (no torch there)
from evals.data import PROMPT_ATTRIBUTES, attribute_value
from workbench import toyworld

INTERSECTIONS = {"IO & Pos": ("IO", "Pos"), "S & Pos": ("S", "Pos")}
UNIONS = {"IO union": "IO", "S union": "S"}
UNION_SEP = " | "


@dataclass
class Kind:
    """One kind of interpretation: its values and their masks over the prompts."""

    name: str
    values: list[str]
    masks: torch.Tensor  # (N, V) float 0/1: prompt n has value v
    union_of: str | None = None  # unions: searched per feature over this attribute's values


def _one_hot(vals: Sequence[str | None], values: list[str]) -> torch.Tensor:
    idx = {v: i for i, v in enumerate(values)}
    m = torch.zeros(len(vals), len(values))
    for r, v in enumerate(vals):
        if v in idx:
            m[r, idx[v]] = 1.0
    return m


def prompt_values(prompts: Sequence[toyworld.IOIPrompt], kind: str) -> list[str | None]:
    """Each prompt's value of a single-valued kind (an attribute or an intersection); None if absent."""
    if kind in INTERSECTIONS:
        a, b = INTERSECTIONS[kind]
        out = []
        for p in prompts:
            va, vb = attribute_value(p, a), attribute_value(p, b)
            out.append(None if va is None or vb is None else f"{va} & {vb}")
        return out
    return [attribute_value(p, kind) for p in prompts]


def build_kind(prompts: Sequence[toyworld.IOIPrompt], kind: str) -> Kind:
    """The values (sorted) and masks of one kind on these prompts."""
    if kind == "Name":
        values = sorted({n for p in prompts for n in (p.io, p.s)})
        idx = {v: i for i, v in enumerate(values)}
        m = torch.zeros(len(prompts), len(values))
        for r, p in enumerate(prompts):
            m[r, idx[p.io]] = m[r, idx[p.s]] = 1.0
        return Kind(kind, values, m)
    base = UNIONS.get(kind, kind)
    if base not in PROMPT_ATTRIBUTES and base not in INTERSECTIONS:
        raise ValueError(f"unknown interpretation kind {kind!r}; known: {', '.join(KINDS)}")
    vals = prompt_values(prompts, base)
    values = sorted({v for v in vals if v is not None})
    return Kind(kind, values, _one_hot(vals, values), base if kind in UNIONS else None)


def build_kinds(prompts: Sequence[toyworld.IOIPrompt], kinds: Sequence[str] = KINDS) -> tuple[list[Kind], list[str]]:
    """(kinds with at least two values on the prompts, names of the kinds left out)."""
    out, skipped = [], []
    for k in kinds:
        kind = build_kind(prompts, k)
        (out if len(kind.values) >= 2 else skipped).append(kind if len(kind.values) >= 2 else k)
    return out, skipped


@dataclass
class KindScores:
    """One kind scored against one dictionary's features (F features, V values)."""

    kind: Kind
    f1: torch.Tensor  # (F,) the best value (or union) of this kind per feature
    precision: torch.Tensor  # (F,)
    recall: torch.Tensor  # (F,)
    labels: list[str]  # (F,) that value, or the union's values joined by " | "
    value_f1: torch.Tensor | None = None  # (F, V) single-value F1 (not for unions)


@dataclass
class Scores:
    """A dictionary's features at one location scored over the whole interpretation space."""

    active: torch.Tensor  # (N, F) bool, the activation pattern the scores use
    kinds: list[KindScores]
    best_f1: torch.Tensor  # (F,) best F1 over every kind
    best_kind: list[str]  # (F,)
    best_label: list[str]  # (F,)
    best_mask: torch.Tensor  # (N, F) the best interpretation's prompts (held fixed by the bootstrap)
    skipped: list[str] = field(default_factory=list)
    _memo: dict = field(default_factory=dict, repr=False)  # paired F1s per (what, weights), reused across thresholds

    def _cached(self, key: str, w: torch.Tensor | None, make):
        k = (key, None if w is None else id(w))
        if k not in self._memo or self._memo[k][0] is not w:  # the weights are kept, so an id is never reused for others
            self._memo[k] = (w, make())
        return self._memo[k][1]

    def kind(self, name: str) -> KindScores | None:
        return next((k for k in self.kinds if k.kind.name == name), None)

    def interpretable(self, threshold: float) -> torch.Tensor:
        """(F,) bool: features whose best interpretation scores F1 >= threshold (the paper's thresholds: 0.5/0.6/0.8)."""
        return self.best_f1 >= threshold

    def interpretable_fraction(self, threshold: float, w: torch.Tensor | None = None) -> torch.Tensor:
        """Fraction of the dictionary's features whose best interpretation has F1 >= threshold; with bootstrap
        weights ``w`` the F1 of each (feature, best interpretation) pair is resampled. A feature active on no
        prompt counts as not interpretable (the authors' code scores it -inf): dividing by the features seen
        active instead would make the number fall as prompts are added and rare features appear
        (docs/ioi.md, "How many prompts"); :meth:`n_active` gives that count."""
        return self._reaching(threshold, w).float().mean(-1)

    def n_active(self) -> int:
        """Features active on at least one of the prompts (grows with their number: rare features appear)."""
        return int(self.active.any(0).sum())

    def interpretable_under(self, threshold: float, w: torch.Tensor) -> torch.Tensor:
        """(B, F) bool: :meth:`interpretable` again under each resample ``w: (B, N)`` of the prompts: which
        features' best interpretation (held fixed) reaches the threshold there. A feature active on no prompt
        never does."""
        return self._reaching(threshold, w)

    def _reaching(self, threshold: float, w: torch.Tensor | None) -> torch.Tensor:
        """(F,) bool, or (B, F) under resamples ``w``: the features whose (resampled) best-interpretation F1
        reaches the threshold; a feature active on no prompt never does."""
        out = torch.zeros(*(() if w is None else (len(w),)), self.active.shape[1], dtype=torch.bool, device=self.active.device)
        alive = self.active.any(0)
        if alive.any():
            out[..., alive] = self._alive_f1(alive, w) >= threshold
        return out

    def _alive_f1(self, alive: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        """(F alive,) or (B, F alive): each live feature's F1 with its best interpretation (resampled by ``w``),
        computed once per weights and shared by every threshold."""
        return self._cached("(any)", w, lambda: torch.nan_to_num(it.paired_f1(self.active[:, alive], self.best_mask[:, alive], w), nan=0.0))

    def value_best(self, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """For a single-value kind: per value the best feature's F1 and index ((V,), (V,))."""
        k = self.kind(name)
        return None if k is None or k.value_f1 is None else it.best_f1_per_value(k.value_f1)

    def value_f1(self, name: str, w: torch.Tensor | None = None) -> torch.Tensor | None:
        """Per value the F1 of its best feature: (V,), or (B, V) with the pairs held fixed under resampling."""
        k, best = self.kind(name), self.value_best(name)
        if best is None:
            return None
        masks = k.kind.masks.to(self.active.device)
        return self._cached(name, w, lambda: torch.nan_to_num(it.paired_f1(self.active[:, best[1]], masks, w), nan=0.0))


def _gather_label(values: list[str], idx: torch.Tensor) -> list[str]:
    return [values[i] for i in idx.tolist()]


def score(active: torch.Tensor, kinds: Sequence[Kind], max_union: int = it.UNION_MAX) -> Scores:
    """Score every feature (active: (N, F) bool on the prompts the kinds were built on) on every kind."""
    n, f = active.shape
    dev = active.device
    out: list[KindScores] = []
    members = []  # per kind, a function of feature indices -> (N, len) bool: the prompts of their value (union)
    best_f1 = torch.full((f,), -1.0, device=dev)
    best_at = torch.full((f,), -1, dtype=torch.long, device=dev)  # index of the kind whose interpretation is best
    for kind in kinds:
        masks = kind.masks.to(dev)
        p, r, f1 = it.precision_recall_f1(active, masks)
        if kind.union_of is None:
            vals, idx = torch.nan_to_num(f1, nan=-1.0).max(1)  # (F,) best value per feature
            ks = KindScores(kind, vals.clamp_min(0), p.gather(1, idx[:, None])[:, 0], r.gather(1, idx[:, None])[:, 0],
                            _gather_label(kind.values, idx), f1)
            members.append(lambda js, masks=masks, idx=idx: masks[:, idx[js]] > 0)
        else:
            vals, size, order = it.union_f1(active, masks, f1, max_union)
            col = it.union_members(masks, order, size)  # (N, F)
            inter = (active.bool() & col).sum(0).to(vals)  # active may come as 0/1 floats, as before
            labels = [UNION_SEP.join(kind.values[i] for i in order[j, :size[j]].tolist()) for j in range(f)]
            ks = KindScores(kind, vals, inter / active.sum(0).to(vals), inter / col.sum(0).clamp_min(1).to(vals), labels)
            members.append(lambda js, col=col: col[:, js])
        out.append(ks)
        better = ks.f1 > best_f1
        best_f1 = torch.where(better, ks.f1, best_f1)
        best_at = torch.where(better, torch.full_like(best_at, len(out) - 1), best_at)
    best_mask = torch.zeros(n, f, dtype=torch.bool, device=dev)  # built once, from each feature's best kind
    best_kind, best_label = [""] * f, [""] * f
    for k, ks in enumerate(out):
        js = (best_at == k).nonzero().squeeze(1)
        if len(js):
            best_mask[:, js] = members[k](js)
        for j in js.tolist():
            best_kind[j], best_label[j] = ks.kind.name, ks.labels[j]
    return Scores(active, out, best_f1.clamp_min(0), best_kind, best_label, best_mask)
