"""Local search over expert permutations (COMET+, Ibrahim et al. 2023), a wrapper for any gate.

A learned permutation of the experts is applied to the inner gate's weights, w' = w Pi (N, E). As in
the authors' code (mazumder-lab/COMET, model/permutations/learn_permutations.py):

- during the search phase (progress < ls_fraction) Pi = exp(sinkhorn_log(P / tau)) is a doubly
  stochastic relaxation of the permutation matrix with logits P (E, E), initialised U(+-0.05) (at
  tau = 1e-3 the first relaxed permutation is already nearly hard: its largest entry per row is ~0.8);
  tau is annealed log-linearly from ls_temp_start to ls_temp_end and the Sinkhorn iterations linearly
  from ls_iters_start to ls_iters_end (optional Gumbel noise on P). The permuted weights are
  renormalised to sum 1 per token (after finitely many Sinkhorn iterations Pi is only approximately
  doubly stochastic). The aux loss has the authors' two entropy terms,
  ls_entropy * (H(Pi) + H(Pi with rows normalised)), entries summed, eps 1e-6 inside the log;
- at the end of the phase the last soft permutation of training (not the logits P: at tau -> 1e-7 they
  differ wherever Sinkhorn had not converged) is hardened with the Hungarian algorithm
  (scipy.optimize.linear_sum_assignment) and frozen: w'[:, perm[e]] = w[:, e] from then on. An
  evaluation during the search phase uses the Hungarian permutation of the last soft one, as the
  authors' inference does.

For the ablation in docs/routing.md each of these choices can be reverted to the version before it:
authors_init=False starts the logits at U(0, 1e-3), harden_soft=False runs the Hungarian algorithm on the
logits, two_entropies=False keeps only H(Pi).

The permutation is its own module (LearnedPermutation) so that several gates can share one: the
authors' MovieLens model learns a single permutation for all task gates (and for the k trees).
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


class LearnedPermutation(nn.Module):
    """A permutation of E experts learned through its Sinkhorn relaxation, then hardened and frozen."""

    def __init__(self, n_experts: int, fraction: float = 0.1, temp_start: float = 1e-3, temp_end: float = 1e-7,
                 iters_start: int = 20, iters_end: int = 150, entropy_coef: float = 1e-4, gumbel: float = 0.0,
                 authors_init: bool = True, harden_soft: bool = True, two_entropies: bool = True):
        super().__init__()
        e = n_experts
        lo, hi = (-0.05, 0.05) if authors_init else (0.0, 1e-3)
        self.perm_logits = nn.Parameter(torch.empty(e, e).uniform_(lo, hi))  # (E, E), the authors' init by default
        self.harden_soft, self.two_entropies = harden_soft, two_entropies
        self.register_buffer("perm", torch.arange(e))
        self.register_buffer("hard", torch.tensor(False))
        self.register_buffer("last_soft", torch.full((e, e), float("nan")))  # (E, E) last training Pi
        self.fraction, self.temp_start, self.temp_end = fraction, temp_start, temp_end
        self.iters_start, self.iters_end, self.entropy_coef, self.gumbel = iters_start, iters_end, entropy_coef, gumbel
        self.temperature, self.iters = temp_start, iters_start

    def set_progress(self, progress: float) -> None:
        """Anneal tau and the Sinkhorn iterations; harden at the end of the search (idempotent per progress)."""
        if bool(self.hard):
            return
        if progress >= self.fraction:
            self.harden()
            return
        s = progress / self.fraction if self.fraction > 0 else 1.0
        lo, hi = math.log10(self.temp_start), math.log10(self.temp_end)
        self.temperature = 10 ** (lo + s * (hi - lo))
        self.iters = round(self.iters_start + s * (self.iters_end - self.iters_start))

    def soft(self) -> Tensor:
        """(E, E) the relaxed permutation at the current temperature (rows/columns sum ~1)."""
        logits = self.perm_logits
        if self.gumbel > 0 and self.training:
            u = torch.rand_like(logits).clamp(1e-10, 1 - 1e-10)
            logits = logits - self.gumbel * torch.log(-torch.log(u))
        return sinkhorn_log(logits / self.temperature, n_iters=self.iters).exp()

    def hungarian(self) -> Tensor:
        """(E,) the permutation closest to the last soft one of training (maximum-weight matching)."""
        from scipy.optimize import linear_sum_assignment

        soft = self.last_soft if self.harden_soft else self.perm_logits
        if torch.isnan(soft).any():  # no training step yet: the relaxation at the current temperature
            with torch.no_grad():
                soft = self.soft()
        _, cols = linear_sum_assignment(soft.detach().double().cpu().numpy(), maximize=True)
        return torch.as_tensor(cols, device=self.perm.device)

    def harden(self) -> None:
        """Hungarian algorithm on the last soft permutation -> a permutation; freeze it."""
        self.perm.copy_(self.hungarian())
        self.hard.fill_(True)
        self.perm_logits.requires_grad_(False)

    def apply(self, a: Allocation, training: bool) -> tuple[Allocation, dict[str, Tensor]]:
        """The allocation with its experts permuted (hard) or mixed by Pi (soft), and the aux losses."""
        if bool(self.hard) or not training:  # expert e's pairs go to expert perm[e]; rows keep their order
            perm = self.perm if bool(self.hard) else self.hungarian()
            return Allocation(a.rows, perm[a.cols], a.values, a.shape), {}
        pi = self.soft()
        self.last_soft.copy_(pi.detach())
        w = a.dense() @ pi  # (N, E): a soft permutation mixes every expert's weight
        w = w / w.sum(-1, keepdim=True).clamp(min=1e-12)
        h = permutation_entropy(pi) if self.two_entropies else -(pi * (pi + 1e-6).log()).sum()
        return from_dense(w), {"perm_entropy": self.entropy_coef * h}


class LocalSearchGate(Gate):
    """Any gate followed by a learned permutation of its experts (its own, or one shared with other gates)."""

    def __init__(self, inner: Gate, permutation: LearnedPermutation):
        super().__init__(inner.d_in, inner.n_experts, inner.k)
        self.inner, self.permutation = inner, permutation

    def set_progress(self, progress: float) -> None:
        self.inner.set_progress(progress)
        self.permutation.set_progress(progress)

    def check_tokens(self, n_tokens: int) -> None:
        self.inner.check_tokens(n_tokens)

    def forward(self, x: Tensor, ids: Tensor | None = None) -> GateOutput:
        out = self.inner(x, ids)
        a, extra = self.permutation.apply(out.allocation, self.training)
        return GateOutput(a, {**out.aux_losses, **extra}, {**out.metrics, **routing_metrics(a)})
