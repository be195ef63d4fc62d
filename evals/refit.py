"""The supervised dictionaries' fit noise: refits on block resamples of the fit split (``--n-refit``).

The bootstrap of :mod:`evals.bootstrap` resamples the prompts a number is measured on and holds the
fitted dictionaries fixed. A supervised dictionary's read-out of the train prompts also depends on
which fit prompts its vectors came from, and for a read-out at chance that is most of its noise:
which noise vectors are nearest decides which features fire at all (docs/ioi.md, "How many prompts").

The fit split comes in blocks of m prompts that share one frame and have each name once as IO and
once as S (:func:`evals.data.balanced_prompts`); the frame of a block is the unit its noise comes
in, so a resample draws whole blocks with replacement. Each refit's number is computed as on the
full sample; their standard deviation is the fit's ± of that number, added in quadrature to the
bootstrap's (the two noises are independent: different prompts).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch

KEY = ("cross_section", "dictionary", "location", "attribute", "f1_threshold")  # what names a row of a table


def block_resamples(n_prompts: int, block: int, n_refit: int, seed: int) -> list[torch.Tensor]:
    """``n_refit`` index tensors (n_prompts,) into prompts laid out in blocks of ``block``: each draws
    ``n_prompts // block`` whole blocks with replacement, keeping a block's prompts together and in order."""
    if block <= 0 or n_prompts % block:
        raise ValueError(f"{n_prompts} prompts are not whole blocks of {block}")
    n_blocks = n_prompts // block
    g = torch.Generator().manual_seed(seed)
    within = torch.arange(block)
    return [(torch.randint(0, n_blocks, (n_blocks,), generator=g)[:, None] * block + within).flatten()
            for _ in range(n_refit)]


def row_key(row: dict, fields: Sequence[str] = KEY) -> tuple:
    """The fields that name a row (those it has), as a hashable key."""
    return tuple((f, row[f]) for f in fields if f in row)


def without_fit(se: float, se_fit: float) -> float:
    """The bootstrap's part of a ± that :func:`add_fit_noise` widened: sqrt(se² - se_fit²) (0 if rounding makes it negative)."""
    return math.sqrt(max(se ** 2 - se_fit ** 2, 0.0))


def add_fit_noise(rows: Iterable[dict], refits: Sequence[Sequence[dict]], names: Sequence[str],
                  fields: Sequence[str] = KEY) -> int:
    """For each row and each ``name`` it has a ``name_se`` for, and that every refit gives (matched by
    :func:`row_key`): ``name_se_fit`` = the refits' standard deviation of ``name``, and ``name_se`` becomes
    sqrt(se² + se_fit²) (se_fit alone where the bootstrap gave none). Returns how many numbers changed."""
    by_refit = [{row_key(r, fields): r for r in refit} for refit in refits]
    changed = 0
    for row in rows:
        key = row_key(row, fields)
        for name in names:
            if f"{name}_se" not in row or row.get(name) is None:
                continue
            vals = [by[key].get(name) for by in by_refit if key in by]
            vals = [float(v) for v in vals if v is not None and math.isfinite(float(v))]
            if len(vals) < 2 or len(vals) < len(by_refit):
                continue  # a refit that lacks the number (e.g. no value left above chance) gives no spread
            sd = float(torch.tensor(vals, dtype=torch.float64).std())
            se = row[f"{name}_se"]
            boot = se if se is not None and math.isfinite(se) else 0.0
            row[f"{name}_se_fit"] = sd
            row[f"{name}_se"] = math.hypot(boot, sd)
            changed += 1
    return changed
