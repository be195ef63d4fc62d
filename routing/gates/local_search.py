"""Local search over expert permutations (COMET+, Ibrahim et al. 2023), a wrapper for any gate.

A learned permutation of the experts is applied to the inner gate's weights, w' = w Pi (N, E):
during the search phase Pi = exp(sinkhorn_log(P / tau)) is a doubly stochastic relaxation of the
permutation matrix with logits P (E, E), initialised U(+-0.05) as in the authors' code (at tau = 1e-3
the first relaxed permutation is already nearly hard: its largest entry per row is ~0.8); tau is annealed log-linearly from ls_temp_start to
ls_temp_end and the Sinkhorn iterations linearly from ls_iters_start to ls_iters_end (optional Gumbel
noise on P); the permuted weights are renormalised to sum 1 per token (Pi is only approximately doubly
stochastic after finitely many Sinkhorn iterations). The aux loss has the authors' two entropy terms,
ls_entropy * (H(Pi) + H(row-normalised Pi)), entries summed (eps 1e-6 inside the log), pushing Pi towards
a permutation. At the end of
the phase (progress >= ls_fraction) the last soft permutation Pi of training (not the logits P: at
tau -> 1e-7 they differ wherever Sinkhorn had not converged) is hardened with the Hungarian algorithm
(scipy.optimize.linear_sum_assignment) and frozen; w'[:, perm[e]] = w[:, e] from then on. An evaluation
during the search phase uses the Hungarian permutation of the last soft one, as the authors' inference does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from routing.gate import Gate, GateOutput, routing_metrics
from workbench.alloc import Allocation, from_dense
from workbench.simplex import sinkhorn_log


def permutation_entropy(pi: Tensor, eps: float = 1e-6) -> Tensor:
    """The authors' penalty: sum of -p log(p + eps) over the entries of Pi and of Pi with rows normalised."""
    rows = pi / pi.sum(-1, keepdim=True)
    return -(pi * (pi + eps).log()).sum() - (rows * (rows + eps).log()).sum()


class LocalSearchGate(Gate):
    def __init__(self, inner: Gate, fraction: float = 0.1, temp_start: float = 1e-3, temp_end: float = 1e-7,
                 iters_start: int = 20, iters_end: int = 150, entropy_coef: float = 1e-4, gumbel: float = 0.0):
        super().__init__(inner.d_in, inner.n_experts, inner.k)
        self.inner = inner
        e = inner.n_experts
        self.perm_logits = nn.Parameter(torch.empty(e, e).uniform_(-0.05, 0.05))  # (E, E), as the authors' init
        self.register_buffer("perm", torch.arange(e))
        self.register_buffer("hard", torch.tensor(False))
        self.register_buffer("last_soft", torch.full((e, e), float("nan")))  # (E, E) last training Pi
        self.fraction, self.temp_start, self.temp_end = fraction, temp_start, temp_end
        self.iters_start, self.iters_end, self.entropy_coef, self.gumbel = iters_start, iters_end, entropy_coef, gumbel
        self.temperature, self.iters = temp_start, iters_start

    def set_progress(self, progress: float) -> None:
        self.inner.set_progress(progress)
        if bool(self.hard):
            return
        if progress >= self.fraction:
            self.harden()
            return
        s = progress / self.fraction if self.fraction > 0 else 1.0
        lo, hi = math.log10(self.temp_start), math.log10(self.temp_end)
        self.temperature = 10 ** (lo + s * (hi - lo))
        self.iters = round(self.iters_start + s * (self.iters_end - self.iters_start))

    def hungarian(self) -> Tensor:
        """(E,) the permutation closest to the last soft one of training (maximum-weight matching)."""
        from scipy.optimize import linear_sum_assignment

        soft = self.last_soft
        if torch.isnan(soft).any():  # no training step yet: the relaxation at the current temperature
            with torch.no_grad():
                soft = self.soft_permutation()
        _, cols = linear_sum_assignment(soft.detach().double().cpu().numpy(), maximize=True)
        return torch.as_tensor(cols, device=self.perm.device)

    def harden(self) -> None:
        """Hungarian algorithm on the last soft permutation -> a permutation; freeze it."""
        self.perm.copy_(self.hungarian())
        self.hard.fill_(True)
        self.perm_logits.requires_grad_(False)

    def soft_permutation(self) -> Tensor:
        logits = self.perm_logits
        if self.gumbel > 0 and self.training:
            u = torch.rand_like(logits).clamp(1e-10, 1 - 1e-10)
            logits = logits - self.gumbel * torch.log(-torch.log(u))
        return sinkhorn_log(logits / self.temperature, n_iters=self.iters).exp()  # (E, E), rows/cols sum 1

    def forward(self, x: Tensor, ids: Tensor | None = None) -> GateOutput:
        out = self.inner(x, ids)
        aux = dict(out.aux_losses)
        inner = out.allocation
        if bool(self.hard) or not self.training:  # expert e's pairs go to expert perm[e]; rows keep their order
            perm = self.perm if bool(self.hard) else self.hungarian()
            a = Allocation(inner.rows, perm[inner.cols], inner.values, inner.shape)
        else:
            pi = self.soft_permutation()
            self.last_soft.copy_(pi.detach())
            w = inner.dense() @ pi  # (N, E): a soft permutation mixes every expert's weight
            a = from_dense(w / w.sum(-1, keepdim=True).clamp(min=1e-12))
            aux["perm_entropy"] = self.entropy_coef * permutation_entropy(pi)
        metrics = {**out.metrics, **routing_metrics(a)}
        return GateOutput(a, aux, metrics)
