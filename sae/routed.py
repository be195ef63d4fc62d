"""Routed SAE: a gate sends each token to one or a few expert sub-dictionaries (Switch SAE and beyond).

Anchor: the Switch SAE (Mudide et al. 2024, arXiv 2410.08201): E experts, each a TopK SAE over its own
slice of d_sae / E latents; a router p(x) = softmax(W_r x) picks one expert per token; that expert's
codes are multiplied by p_e(x), so the router learns from the reconstruction, and a Switch balance
loss alpha * E * sum_e f_e P_e keeps the load even. Here **any gate of routing/gates is the router**
(the ``Gate`` interface: x -> GateOutput with an Allocation of (token, expert) pairs and combine
weights w >= 0):

    x_c         = x_in - b_dec                                           # (N, d_in)
    route       = gate(gate_scale * x_c)       (N x E allocation, weights w_ne; detached input)
    pre[n, j]   = x_c[n] . W_enc[:, j] + b_enc[j]   only for latents j of the experts n is routed to
    codes       = each token keeps its k largest  w_ne * ReLU(pre[n, j])  over those latents
    x_hat_in    = sum_j codes[n, j] W_dec[j] + b_dec

With a top-1 gate that is the Switch SAE's encoder (their code selects the top-k of p * ReLU(pre) of
the chosen expert); with several experts per token a token still gets exactly k latents, so L0 is the
same as TopK's. The encoder computes only the routed experts' latents, grouped expert by expert
(``Allocation.by_unit``): N * d_in * (d_sae / E) * experts_per_token multiply-adds instead of
N * d_in * d_sae, the Switch SAE's saving. Gradients go through the same sparse kernels as every SAE
(``sae.kernels``); the router gets gradient through w. Learned gates without a balance term of their own
(COMET, DSelect-k) get the Switch loss with P_e = the mean combine weight of expert e; gates balanced by
construction (``BALANCED``) get none.

Differences from the paper's code: the router reads x_c (their separate b_router is initialised to the
same geometric median as b_dec); ``gate_scale`` (1 while training) keeps the router's input unchanged
when a scalar input normalisation is folded into the saved weights. Batch-dependent gates
(expert-choice, sparse-ot, base) make the codes depend on the batch; routed SAEs have no threshold mode.
"""

from __future__ import annotations

import torch
from torch import Tensor

from workbench.alloc import Allocation

from sae.config import SAEConfig
from sae.kernels import Plan, decode_at, decode_dense, encode_at
from sae.model import SAE, SAEOutput
from sae.normalize import per_token_factor


# gates whose allocation balances the load by construction (capacities, balanced assignment, transport
# marginals) or cannot learn it (hash): no Switch loss is added to them
BALANCED = ("expert-choice", "base", "s-base", "sparse-ot", "hash")


class RoutedSAE(SAE):
    """E expert sub-dictionaries of d_sae / E latents each, chosen per token by a routing gate."""

    arch = "routed"

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.n_experts = cfg.experts
        self.per_expert = cfg.d_sae // cfg.experts
        self.gate = self._make_gate(seed=0)
        self.register_buffer("gate_scale", torch.ones(1))
        # whether forward fills the dense (N, d_sae) pre-activations (zero off the routed experts): only the
        # aux losses read them, and writing N x d_sae floats is what routing saves; the trainer turns it off
        # for steps whose aux loss has no latent to act on
        self.keep_pre = True

    def _make_gate(self, seed: int):
        from routing.gates import make_gate

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return make_gate(self.cfg.gate_config(), self.cfg.d_in, seed=seed + 12345)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator) -> None:
        """The shared initialisation, and a fresh router drawn from the same generator (seeded runs)."""
        super().init_weights(generator)
        seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator))
        self.gate = self._make_gate(seed).to(self.W_enc.device)

    def set_progress(self, progress: float) -> None:
        self.gate.set_progress(progress)

    def expert_of(self, latents: Tensor) -> Tensor:
        """The expert that owns each latent index."""
        return latents // self.per_expert

    def route(self, x_c: Tensor):
        """GateOutput of the (N, d_in) centred inputs (router input detached: b_dec learns from reconstruction)."""
        out = self.gate(x_c.detach() * self.gate_scale)
        if "balance" not in out.aux_losses and self.cfg.balance_coef > 0 and self.cfg.gate not in BALANCED:
            from routing.gate import switch_balance_loss

            w = out.allocation.dense()  # (N, E) combine weights as the router's probabilities
            out.aux_losses["balance"] = switch_balance_loss(w, out.allocation, self.cfg.balance_coef)
        return out

    def _candidates(self, x_c: Tensor, route: Allocation, pre_full: Tensor | None):
        """Each routed (token, expert) pair's top-k latents by w * pre: (rows, cols, pre, pair, score) with pair
        the index of the (token, expert) pair in ``route`` (its combine weight: route.values[pair]), and the dense
        (N, d_sae) pre-activations (zero off the routed experts; the aux losses read them) or None."""
        k, m = self.cfg.k, self.per_expert
        n = x_c.shape[0]
        g = route.by_unit
        w_pairs = route.values.detach()[g.order]  # (nnz_route,) combine weights, grouped by expert
        pre_dense = x_c.new_zeros(n, self.cfg.d_sae) if pre_full is None and self.keep_pre else None
        parts = []
        start = 0
        for e, cnt in enumerate(g.split_sizes()):
            if cnt == 0:
                continue
            rows = g.rows[start:start + cnt]  # (n_e,) tokens routed to expert e
            w = w_pairs[start:start + cnt]  # (n_e,)
            pair = g.order[start:start + cnt]  # (n_e,) their index in route
            start += cnt
            lat = slice(e * m, (e + 1) * m)
            if pre_full is None:
                block = torch.addmm(self.b_enc[lat], x_c[rows], self.W_enc[:, lat])  # (n_e, m)
                if pre_dense is not None:
                    pre_dense[rows, lat] = block
            else:
                block = pre_full[rows, lat].detach()
            score, idx = (w[:, None] * block).topk(k, dim=1)  # (n_e, k)
            parts.append((rows[:, None].expand(-1, k).reshape(-1), (idx + e * m).reshape(-1),
                          block.gather(1, idx).reshape(-1), pair.repeat_interleave(k), score.reshape(-1)))
        if not parts:
            empty = x_c.new_zeros(0, dtype=torch.long)
            return (empty, empty, x_c.new_zeros(0), empty, x_c.new_zeros(0)), pre_dense
        return tuple(torch.cat(p) for p in zip(*parts)), pre_dense

    def _select(self, cand, n: int) -> tuple[Allocation, Tensor]:
        """Keep each token's k best candidates (by score); pairs sorted by token. Returns (allocation, the index
        of each kept latent's (token, expert) pair in the route)."""
        rows, cols, pre, pair, score = cand
        order = torch.argsort(score, descending=True, stable=True)
        order = order[torch.argsort(rows[order], stable=True)]  # by token, best first inside a token
        rows_s = rows[order]
        counts = torch.bincount(rows_s, minlength=n)
        rank = torch.arange(rows_s.numel(), device=rows.device) - (torch.cumsum(counts, 0) - counts)[rows_s]
        keep = order[rank < self.cfg.k]
        return Allocation(rows[keep], cols[keep], pre[keep], (n, self.cfg.d_sae)), pair[keep]

    def forward(self, x: Tensor) -> SAEOutput:
        """x: (N, d_in) -> SAEOutput; ``route`` holds the GateOutput (tokens x experts); ``pre`` is None when
        ``keep_pre`` is off (sparse kernel)."""
        factor = per_token_factor(x) if self.cfg.normalize == "per_token" else None  # (N, 1)
        x_in = x * factor if factor is not None else x
        x_c = x_in - self.b_dec  # (N, d_in)
        route = self.route(x_c)
        sparse = self.kernel == "sparse"
        pre_full = None if sparse else torch.addmm(self.b_enc, x_c, self.W_enc)  # dense reference: (N, d_sae)
        with torch.no_grad():
            cand, pre_dense = self._candidates(x_c, route.allocation, pre_full)
        a, pair = self._select(cand, x.shape[0])
        w = route.allocation.values[pair]  # (nnz,) combine weights, differentiable: the router learns from x_hat
        plan = Plan(a) if sparse else None
        relu = encode_at(x_c, self.W_enc, self.b_enc, a, plan) if sparse else pre_full[a.rows, a.cols].relu()
        values = relu * w  # (nnz,) codes: the expert's ReLU activations times its combine weight
        x_hat_in = (decode_at(values, self.W_dec, plan) if sparse else decode_dense(values, self.W_dec, a)) + self.b_dec
        x_hat = x_hat_in / factor if factor is not None else x_hat_in
        if not sparse:  # the dense reference's pre, zero off the routed experts as the sparse path's
            on = route.allocation.mask().repeat_interleave(self.per_expert, dim=1)  # (N, d_sae)
            pre = pre_full * on
        else:
            pre = pre_dense
        return SAEOutput(x_hat, a, values, pre, x_c, plan, x_in, x_hat_in, factor, route)

    @torch.no_grad()
    def experts_of(self, acts: Tensor) -> Tensor:
        """(..., d_in) raw activations -> (..., E) combine weights of the router (0 off its choice)."""
        flat = acts.reshape(-1, acts.shape[-1]).to(self.W_enc)
        factor = per_token_factor(flat) if self.cfg.normalize == "per_token" else None
        x_c = (flat * factor if factor is not None else flat) - self.b_dec
        return self.route(x_c).allocation.dense().reshape(*acts.shape[:-1], self.n_experts)

    @torch.no_grad()
    def folded(self, scale: float) -> "RoutedSAE":
        out = super().folded(scale)
        if self.cfg.normalize != "per_token":
            out.gate_scale.mul_(scale)  # the router keeps seeing the scaled input
        return out
