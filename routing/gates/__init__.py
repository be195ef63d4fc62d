"""Gate registry: ``make_gate(cfg, d_in)`` builds any gate (wrapped in local search when asked), and
``make_permutation(cfg)`` the learned expert permutation that several gates may share."""

from __future__ import annotations

from routing.config import GateConfig
from routing.gate import Gate


def make_permutation(cfg: GateConfig):
    """The learned expert permutation of local search (COMET+), with cfg's schedule."""
    from routing.gates.local_search import LearnedPermutation

    ab = cfg.ablations()
    return LearnedPermutation(cfg.experts, cfg.ls_fraction, cfg.ls_temp_start, cfg.ls_temp_end, cfg.ls_iters_start,
                              cfg.ls_iters_end, cfg.ls_entropy, cfg.ls_gumbel, authors_init="perm-init" not in ab,
                              harden_soft="harden-logits" not in ab, two_entropies="perm-entropy" not in ab)


def make_gate(cfg: GateConfig, d_in: int, seed: int = 12345, permutation=None) -> Gate:
    """The gate cfg.gate; with cfg.local_search it is followed by `permutation` (shared) or its own."""
    from routing.gates.base_layers import BaseGate, SBaseGate
    from routing.gates.comet import CometGate
    from routing.gates.dselect import DSelectKGate
    from routing.gates.expert_choice import ExpertChoiceGate
    from routing.gates.hash import HashGate
    from routing.gates.local_search import LocalSearchGate
    from routing.gates.sparse_ot import SparseOTGate
    from routing.gates.topk import TopKGate

    e, k = cfg.experts, cfg.k
    builders = {
        "topk": lambda: TopKGate(d_in, e, k, cfg.noisy, cfg.balance_coef, cfg.z_coef),
        "hash": lambda: HashGate(d_in, e, k, seed=seed),
        "expert-choice": lambda: ExpertChoiceGate(d_in, e, k, cfg.capacity_factor, cfg.z_coef),
        "base": lambda: BaseGate(d_in, e, k, cfg.z_coef),
        "s-base": lambda: SBaseGate(d_in, e, k, cfg.sinkhorn_iters, cfg.z_coef),
        "dselect": lambda: DSelectKGate(d_in, e, k, cfg.smooth_gamma, cfg.entropy_reg),
        "comet": lambda: CometGate(d_in, e, k, cfg.smooth_gamma, cfg.entropy_reg,
                                   node_bias="node-bias" not in cfg.ablations(), center_input=cfg.center_input),
        "sparse-ot": lambda: SparseOTGate(d_in, e, k, cfg.ot_gamma, cfg.ot_orientation, cfg.ot_combine,
                                          cfg.ot_method, cfg.ot_iters, cfg.ot_group, cfg.capacity_factor,
                                          cfg.ot_compile, cfg.ot_capacity_multiple_of),
    }
    gate = builders[cfg.gate]()
    if cfg.local_search:
        gate = LocalSearchGate(gate, permutation if permutation is not None else make_permutation(cfg))
    return gate
