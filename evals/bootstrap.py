"""Bootstrap ± for every number of the IOI report: seeded resampling of the prompts.

A :class:`Resampler` holds ``B`` rows of multinomial counts over ``n`` prompts (each row sums to
``n``: one bootstrap sample, drawn with replacement). Every metric is a function of per-prompt
quantities through means, so its bootstrap distribution costs one ``(B, n) @ (n, ...)`` product: no
patched model run is repeated. The ± is the standard deviation of the ``B`` resampled values
(the bootstrap standard error). Choices made once on the full sample (which features are
interpretable, which feature matches a value best) are held fixed across the resamples; the ±
then measures the sampling noise of the number, not of that selection.

Metric functions take ``w=None`` (the plain mean over prompts, a 0-d tensor) or ``w`` = the
resampling weights (a ``(B,)`` tensor of resampled values): :func:`wmean` is the one place that
distinction lives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


def wmean(x: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the prompt axis (dim 0) of ``x: (n, ...)``; with weights ``w: (B, n)`` one mean per row: (B, ...)."""
    x = x.float()
    if w is None:
        return x.mean(0)
    w = w.to(x.device, x.dtype)
    return (w @ x.reshape(len(x), -1)).reshape(len(w), *x.shape[1:]) / w.sum(1).reshape(-1, *[1] * (x.ndim - 1))


@dataclass
class Resampler:
    """B seeded bootstrap samples of n prompts, as counts ``w: (B, n)``; ``w is None`` when B = 0."""

    w: torch.Tensor | None

    @classmethod
    def make(cls, n: int, n_boot: int, seed: int, device: str | torch.device = "cpu") -> "Resampler":
        if n_boot <= 0 or n <= 0:
            return cls(None)
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, n, (n_boot, n), generator=g)
        w = torch.zeros(n_boot, n).scatter_add_(1, idx, torch.ones(n_boot, n))
        return cls(w.to(device))

    def se(self, fn: Callable[..., torch.Tensor], *args, **kwargs) -> float:
        """Bootstrap standard error of ``fn(*args, w=...)`` (NaN without resamples or where undefined)."""
        if self.w is None:
            return float("nan")
        vals = torch.as_tensor(fn(*args, **kwargs, w=self.w), dtype=torch.float64).flatten()
        vals = vals[torch.isfinite(vals)]
        return float(vals.std()) if len(vals) > 1 else float("nan")

    def stat(self, fn: Callable[..., torch.Tensor], *args, **kwargs) -> tuple[float, float]:
        """(value on the full sample, bootstrap standard error) of a metric function taking ``w``."""
        return float(fn(*args, **kwargs)), self.se(fn, *args, **kwargs)
