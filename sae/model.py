"""The sparse autoencoder: one shape, four allocations.

    pre(x)   = W_enc^T (x - b_dec) + b_enc                       # (N, d_sae)
    f(x)     = ReLU(pre) on the pairs chosen by allocate(pre)     # sparse codes
    x_hat    = W_dec^T f(x) + b_dec                               # (N, d_in)

with W_enc (d_in, d_sae), W_dec (d_sae, d_in) (unit-norm rows), the layout SAELens saves. The
variants differ only in ``allocate``, one call into :mod:`workbench.alloc` over the batch's
(tokens x latents) pre-activation matrix:

- TopK (Gao et al. 2024, arXiv 2406.04093): each token keeps its k largest latents.
- Feature Choice (Ayonrinde 2024, arXiv 2411.02124): each latent keeps its top-m tokens,
  m = k*N/d_sae (or Zipf capacities by usage rank), so tokens get a variable number of latents.
- Mutual Choice (same paper): the k*N largest entries of the whole matrix.
- ReLU + L1 (the classic SAE): every positive entry (threshold 0).

ReLU is monotone, so allocating on ``pre`` and applying ReLU to the selected entries selects the same
nonzero codes as allocating on ``ReLU(pre)``; it saves one pass over the (N, d_sae) matrix.

Inference for FC/MC must not depend on who else is in the batch: in ``mode="threshold"`` the
allocation is ``pre > theta`` with a threshold learned during training as a running average of the
smallest selected activation, per latent (FC) or global (MC, as BatchTopK, arXiv 2412.06410).

With ``normalize="per_token"`` (:mod:`sae.normalize`) the SAE reads x' = x * sqrt(d_in) / |x| and
returns x_hat = x_hat' * |x| / sqrt(d_in); everything above happens in the normalised space.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from workbench import alloc
from workbench.alloc import Allocation

from sae.config import SAEConfig
from sae.kernels import Plan, decode_at, decode_dense, encode_at
from sae.normalize import per_token_factor


@dataclass
class SAEOutput:
    x_hat: Tensor  # (N, d_in) reconstruction of the raw input
    alloc: Allocation  # the active (token, latent) pairs
    values: Tensor  # (nnz,) ReLU'd codes at alloc's pairs (differentiable)
    pre: Tensor  # (N, d_sae) pre-activations (carries gradients only with the dense kernel)
    x_c: Tensor  # (N, d_in) x_in - b_dec
    plan: Plan | None  # sparse-kernel bookkeeping (None with the dense kernel)
    x_in: Tensor  # (N, d_in) the input in the space the SAE works in (x itself unless per_token)
    x_hat_in: Tensor  # (N, d_in) the reconstruction in that space (training losses compare x_in, x_hat_in)
    factor: Tensor | None  # (N, 1) per-token factors x_in = factor * x (None unless per_token)
    route: object | None = None  # routed SAEs: the gate's GateOutput (tokens x experts), else None

    def l0(self) -> Tensor:
        """(N,) active latents per token (codes > 0)."""
        return alloc.counts(self.alloc.rows, self.alloc.shape[0], keep=self.values > 0)  # (no device sync)

    def codes(self) -> Tensor:
        """(N, d_sae) dense codes."""
        return self.values.new_zeros(self.alloc.shape).index_put((self.alloc.rows, self.alloc.cols), self.values)


class SAE(nn.Module):
    """Shared shape; subclasses define ``allocate`` (and how their inference threshold is learned)."""

    arch: ClassVar[str] = ""
    pre_layout: ClassVar[str] = "row"  # memory layout of pre that makes allocate read contiguously
    threshold_kind: ClassVar[str | None] = None  # "unit" (per latent), "global" or None (no threshold mode)

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        if cfg.d_in is None or cfg.d_sae is None:
            raise ValueError("SAE needs a resolved config (SAEConfig.resolve(d_in))")
        self.cfg = cfg
        d, f = cfg.d_in, cfg.d_sae
        self.W_enc = nn.Parameter(torch.zeros(d, f))
        self.b_enc = nn.Parameter(torch.zeros(f))
        self.W_dec = nn.Parameter(torch.zeros(f, d))
        self.b_dec = nn.Parameter(torch.zeros(d))
        # inference thresholds (FC/MC), running latent densities, tokens since each latent last fired
        self.register_buffer("threshold", torch.full((f,), float("inf")))
        self.register_buffer("density", torch.full((f,), cfg.k / f))
        self.register_buffer("since_active", torch.zeros(f, dtype=torch.long))
        self.mode = "batch"
        self.kernel = cfg.kernel_used
        self._last_factor: Tensor | None = None  # per_token: factors of the last encode() (for decode())
        self._since_bound: int | None = None  # host-side upper bound on since_active.max() (None: unknown)

    # ---- the one place variants differ -------------------------------------------------------
    def allocate(self, pre: Tensor) -> Allocation:
        raise NotImplementedError

    def set_progress(self, progress: float) -> None:
        """Training progress in [0, 1] (for routers with schedules; a no-op for the other variants)."""

    # ---- shared shape ------------------------------------------------------------------------
    @property
    def modes(self) -> tuple[str, ...]:
        """Allocation modes this SAE supports: batch, plus threshold for FC/MC."""
        return ("batch", "threshold") if self.threshold_kind else ("batch",)

    def set_mode(self, mode: str) -> "SAE":
        if mode not in self.modes:
            raise ValueError(f"{self.arch} SAEs support modes {self.modes}, not {mode!r}")
        self.mode = mode
        return self

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator) -> None:
        """Decoder rows: random unit vectors; encoder: the decoder's transpose; biases 0."""
        w = torch.randn(self.W_dec.shape, generator=generator, dtype=torch.float32)
        w = (w / w.norm(dim=1, keepdim=True)).to(self.W_dec)
        self.W_dec.copy_(w)
        self.W_enc.copy_(w.t())
        self.b_enc.zero_()
        self.b_dec.zero_()

    @torch.no_grad()
    def fit_encoder_scale(self, x: Tensor) -> float:
        """Scale W_enc, b_enc by the c >= 0 minimising sum |x - b_dec - c (x_hat - b_dec)|^2 on a batch.

        Codes are ReLU(c * pre) = c * ReLU(pre) and every allocation is invariant to a positive scale,
        so this is an exact least-squares fit of the reconstruction's size. With unit-norm decoder
        rows and a tied encoder, the first reconstructions are otherwise too large (FVU > 1).
        """
        out = self(x)
        r = out.x_hat_in - self.b_dec  # (N, d_in)
        c = ((out.x_in - self.b_dec) * r).sum() / r.pow(2).sum().clamp_min(1e-12)
        c = float(c.clamp_min(1e-3))
        self.W_enc.mul_(c)
        self.b_enc.mul_(c)
        return c

    def select_dtype(self, device: torch.device) -> torch.dtype:
        """The dtype pre_acts and the allocation run in (SAEConfig.precision; the sparse kernel only:
        the dense kernel differentiates through pre itself, so it stays in the weights' dtype)."""
        p = self.cfg.precision
        if self.kernel == "sparse" and (p == "bfloat16" or (p == "auto" and device.type == "cuda")):
            return torch.bfloat16
        return self.W_enc.dtype

    def pre_acts(self, x_c: Tensor) -> Tensor:
        """(N, d_sae) = x_c @ W_enc + b_enc, written column-major when allocate reads columns."""
        W, b, dt = self.W_enc, self.b_enc, self.select_dtype(x_c.device)
        if dt != x_c.dtype:
            W, b, x_c = W.to(dt), b.to(dt), x_c.to(dt)
        if self.pre_layout == "col" and self.mode == "batch":
            return torch.addmm(b[:, None], W.t(), x_c.t()).t()
        return torch.addmm(b, x_c, W)

    def select(self, pre: Tensor) -> Allocation:
        """The active pairs: the variant's allocation, or pre > threshold in threshold mode."""
        if self.mode == "threshold":
            return alloc.threshold(pre, self.threshold)
        return self.allocate(pre)

    def values_at(self, out_pre: Tensor, x_c: Tensor, a: Allocation, plan: Plan | None) -> Tensor:
        """(nnz,) ReLU(pre) at a's pairs with gradients to W_enc, b_enc, x_c."""
        if plan is not None:
            if getattr(x_c, "_data_minus_b_dec", False):
                # x_c = x - b_dec with x data (no gradient): b_dec's gradient without the per-token gather
                return encode_at(x_c.detach(), self.W_enc, self.b_enc, a, plan, b_dec=self.b_dec)
            return encode_at(x_c, self.W_enc, self.b_enc, a, plan)
        return out_pre[a.rows, a.cols].relu()

    def decode_pairs(self, values: Tensor, a: Allocation, plan: Plan | None) -> Tensor:
        """(N, d_in) sum of values * decoder rows over each token's pairs (no bias)."""
        if plan is not None:
            return decode_at(values, self.W_dec, plan)
        return decode_dense(values, self.W_dec, a)

    def forward(self, x: Tensor) -> SAEOutput:
        """x: (N, d_in) -> SAEOutput. Sparse kernel: pre is computed without autograd."""
        factor = per_token_factor(x) if self.cfg.normalize == "per_token" else None  # (N, 1)
        x_in = x * factor if factor is not None else x
        x_c = x_in - self.b_dec  # (N, d_in)
        if not x_in.requires_grad:
            x_c._data_minus_b_dec = True  # only b_dec carries a gradient into x_c (see values_at)
        sparse = self.kernel == "sparse"
        with torch.set_grad_enabled(torch.is_grad_enabled() and not sparse):
            pre = self.pre_acts(x_c)  # (N, d_sae)
        a = self.select(pre.detach())
        plan = Plan(a) if sparse else None
        values = self.values_at(pre, x_c, a, plan)
        x_hat_in = self.decode_pairs(values, a, plan) + self.b_dec
        x_hat = x_hat_in / factor if factor is not None else x_hat_in
        return SAEOutput(x_hat, a, values, pre, x_c, plan, x_in, x_hat_in, factor)

    # ---- the Dictionary interface (evals) ------------------------------------------------------
    @torch.no_grad()
    def encode(self, acts: Tensor) -> Tensor:
        """(..., d_in) -> (..., d_sae) codes (in the current mode), in the scale of the raw input.

        So ``codes @ features`` is each latent's share of the reconstruction of ``acts`` itself. Per
        token, that is the SAE's activations times |x| / sqrt(d_in) (SAELens's ``encode`` returns the
        activations themselves: :meth:`forward`'s ``values``); the factors are kept for :meth:`decode`.
        """
        flat = acts.reshape(-1, acts.shape[-1]).to(self.W_enc)
        out = self(flat)
        codes = out.codes()
        if out.factor is not None:
            codes = codes / out.factor
            self._last_factor = out.factor.reshape(*acts.shape[:-1], 1)
        return codes.reshape(*acts.shape[:-1], -1)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """(..., d_sae) codes from :meth:`encode` -> (..., d_in) reconstruction.

        Per token the decoder bias scales with the token's norm, b_dec * |x| / sqrt(d_in): decode uses
        the norms of the activations last passed to encode (as SAELens's decode does); codes of another
        shape are decoded with b_dec as is (the bias in the normalised space).
        """
        out = codes.to(self.W_dec) @ self.W_dec
        f = self._last_factor
        if self.cfg.normalize == "per_token" and f is not None and f.shape[:-1] == codes.shape[:-1]:
            return out + self.b_dec / f.to(out)
        return out + self.b_dec

    @property
    def features(self) -> Tensor:
        """(d_sae, d_in) decoder vectors."""
        return self.W_dec.detach()

    # ---- training statistics -------------------------------------------------------------------
    @torch.no_grad()
    def update_stats(self, out: SAEOutput, density_ema: float, total=None) -> None:
        """After a training step: tokens since each latent fired, density EMA, inference thresholds.

        `total` (data parallel) sums a tensor over the processes, so every rank counts the global batch.
        """
        on = out.values > 0  # (nnz,) pairs whose code fired (values are ReLU'd: the others are 0)
        cols, vals = out.alloc.cols, out.values.detach()  # masks, not boolean indexing: no device sync
        counts = alloc.counts(cols, self.cfg.d_sae, keep=on)  # (d_sae,)
        n = out.alloc.shape[0]
        if total is not None:
            counts = total(counts)
            n = int(total(torch.tensor([n], device=counts.device))[0])
        self.since_active.add_(n).masked_fill_(counts > 0, 0)
        if self._since_bound is not None:
            self._since_bound += n
        self.density.mul_(1 - density_ema).add_(counts.to(self.density) / n, alpha=density_ema)
        self._update_usage(cols, vals, density_ema)
        if self.threshold_kind and self.mode == "batch" and vals.numel():
            self._update_threshold(cols, vals.masked_fill(~on, float("inf")), counts > 0, on)

    def _update_usage(self, cols: Tensor, vals: Tensor, ema: float) -> None:
        """Variants whose usage is not the density keep their own statistic here."""

    def usage(self) -> Tensor:
        """(d_sae,) how much each latent is used, summing to about k: what aux_zipf's Zipf target and
        Zipf capacities rank latents by. The running density, unless the allocation fixes it (FC)."""
        return self.density

    def _update_threshold(self, cols: Tensor, vals: Tensor, seen: Tensor, on: Tensor) -> None:
        """theta <- (1 - beta) theta + beta * (smallest selected activation), first value taken as is.

        vals: (nnz,) the pairs' codes, inf where a pair did not fire; seen: (d_sae,) latents that fired."""
        if self.threshold_kind == "global":
            obs = vals.min().expand_as(self.threshold)
            seen = on.any().expand_as(seen)
        else:
            obs = torch.full_like(self.threshold, float("inf")).scatter_reduce(0, cols, vals, "amin")
        beta = self.cfg.threshold_ema
        new = torch.where(torch.isinf(self.threshold), obs, (1 - beta) * self.threshold + beta * obs)
        self.threshold.copy_(torch.where(seen, new, self.threshold))

    def any_dead(self, window: int) -> bool:
        """Whether some latent fired on none of the last `window` tokens (= dead_mask(window).any()).

        Reads the device only when a latent could have reached the window: since_active grows by at
        most the batch per step, so a host-side bound answers most steps without a GPU sync."""
        if self._since_bound is None or self._since_bound >= window:
            self._since_bound = int(self.since_active.max()) if self.since_active.numel() else 0
        return self._since_bound >= window

    def _load_from_state_dict(self, *args, **kwargs):
        self._since_bound = None  # since_active is replaced: the bound is unknown until read again
        super()._load_from_state_dict(*args, **kwargs)

    def dead_mask(self, window: int) -> Tensor:
        """(d_sae,) bool: latents that fired on none of the last `window` tokens."""
        return self.since_active >= window

    # ---- decoder constraint --------------------------------------------------------------------
    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Project out each decoder row's gradient component along the row (unit-norm constraint)."""
        g = self.W_dec.grad
        if g is not None:
            g.sub_((g * self.W_dec).sum(1, keepdim=True) * self.W_dec)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def folded(self, scale: float) -> "SAE":
        """A copy that takes raw activations x when this one was trained on scale * x.

        pre = W_enc^T(s x - b) + b_enc = (s W_enc)^T (x - b/s) + b_enc; x_hat / s = (W_dec / s)^T f + b/s.
        Thresholds act on pre, so they are unchanged. A per-token normalised SAE reads x / |x| whatever
        the scale of x, so its weights stay as they are.
        """
        out = build_sae(self.cfg).to(self.W_enc.device)
        out.load_state_dict(self.state_dict())
        if self.cfg.normalize != "per_token":
            out.W_enc.mul_(scale)
            out.W_dec.div_(scale)
            out.b_dec.div_(scale)
        out.mode = self.mode
        return out


class TopKSAE(SAE):
    """Each token keeps its k largest latents."""

    arch = "topk"

    def allocate(self, pre: Tensor) -> Allocation:
        return alloc.topk_per_row(pre, self.cfg.k)


class FeatureChoiceSAE(SAE):
    """Each latent keeps its top-m_i tokens of the batch; sum_i m_i = k * N exactly."""

    arch = "feature-choice"
    pre_layout = "col"
    threshold_kind = "unit"

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        # running share of the batch's activation mass per latent, times k (sums to k): the allocation
        # fixes each latent's density at its capacity, so usage is measured by what the codes carry
        self.register_buffer("mass", torch.full((cfg.d_sae,), cfg.k / cfg.d_sae))

    def allocate(self, pre: Tensor) -> Allocation:
        n = pre.shape[0]
        known = None
        if self.cfg.capacity == "uniform":  # floor(kN/d_sae) each, one more for kN mod d_sae: known on the host
            base, extra = divmod(self.cfg.k * n, self.cfg.d_sae)
            known = (base, base + (extra > 0), self.cfg.k * n)
        return alloc.topk_per_col(pre, self.capacities(n), known)

    def capacities(self, n: int) -> Tensor:
        """(d_sae,) capacities summing exactly to k N: uniform (floor(kN/d_sae), one more for the
        kN mod d_sae most used latents) or Zipf m_r ∝ r^-alpha by usage rank (capped at N, the rest
        spread over the others)."""
        cfg = self.cfg
        if cfg.capacity == "uniform":
            return alloc.uniform_capacities(cfg.k * n, cfg.d_sae, usage=self.usage())
        return alloc.zipf_capacities(cfg.k * n, cfg.d_sae, cfg.zipf_alpha, alloc.ranks_of(self.usage()), cap=n)

    def _update_usage(self, cols: Tensor, vals: Tensor, ema: float) -> None:
        share = torch.zeros_like(self.mass).index_add_(0, cols, vals.to(self.mass))
        share *= self.cfg.k / share.sum().clamp_min(1e-12)
        self.mass.mul_(1 - ema).add_(share, alpha=ema)

    def usage(self) -> Tensor:
        return self.mass


class MutualChoiceSAE(SAE):
    """The k * N largest entries of the batch's (tokens x latents) matrix."""

    arch = "mutual-choice"
    threshold_kind = "global"

    def allocate(self, pre: Tensor) -> Allocation:
        return alloc.topk_global(pre, self.cfg.k * pre.shape[0])


class ReluL1SAE(SAE):
    """Every positive pre-activation (the classic SAE; sparsity comes from the L1 penalty)."""

    arch = "relu-l1"

    def allocate(self, pre: Tensor) -> Allocation:
        return alloc.threshold(pre, 0.0)


VARIANTS: dict[str, type[SAE]] = {c.arch: c for c in (TopKSAE, FeatureChoiceSAE, MutualChoiceSAE, ReluL1SAE)}


def variant(arch: str) -> type[SAE]:
    """The SAE class of an arch (the routed SAE lives in sae.routed, which imports this module)."""
    if arch == "routed":
        from sae.routed import RoutedSAE

        return RoutedSAE
    return VARIANTS[arch]


def inference_mode(arch: str) -> str:
    """The mode a saved SAE of this arch runs in: threshold for FC/MC (batch-independent), else batch."""
    return "threshold" if variant(arch).threshold_kind else "batch"


def build_sae(cfg: SAEConfig) -> SAE:
    """The SAE class for cfg.arch (cfg resolved: d_in and d_sae known)."""
    return variant(cfg.arch)(cfg)


@torch.no_grad()
def geometric_median(x: Tensor, iters: int = 30, eps: float = 1e-6) -> Tensor:
    """argmin_m sum_n |x_n - m| by Weiszfeld's iterations (start: the mean). x: (N, d) -> (d,)."""
    m = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - m).norm(dim=1).clamp_min(eps)  # (N,)
        m_new = (w[:, None] * x).sum(0) / w.sum()
        if (m_new - m).norm() <= eps * m.norm().clamp_min(1.0):
            return m_new
        m = m_new
    return m
