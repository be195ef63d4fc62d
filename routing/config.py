"""GateConfig: which gate, how many experts, and the knobs of each method (CLI flags map one-to-one)."""

from __future__ import annotations

from dataclasses import dataclass, field

from workbench.config import one_of, positive, require

GATES = ("topk", "hash", "expert-choice", "base", "s-base", "dselect", "comet", "sparse-ot")
TREE_GATES = ("dselect", "comet")


@dataclass
class GateConfig:
    gate: str = field(default="topk", metadata={"help": f"gate: {', '.join(GATES)}"})
    experts: int = field(default=16, metadata={"help": "number of experts E"})
    k: int = field(default=2, metadata={"help": "experts per token (Expert Choice/OT-experts: sets capacity)"})
    local_search: bool = field(default=False, metadata={
        "help": "wrap the gate in the learned expert permutation (COMET+ style local search)"})
    noisy: bool = field(default=False, metadata={"help": "topk: add learned Gaussian noise to the logits"})
    balance_coef: float = field(default=0.01, metadata={"help": "Switch load-balancing loss weight alpha"})
    z_coef: float = field(default=0.001, metadata={"help": "router z-loss weight (topk, expert-choice, base)"})
    capacity_factor: float = field(default=1.0, metadata={
        "help": "expert-choice / sparse-ot experts orientation: capacity = ceil(cf * N * k / E)"})
    smooth_gamma: float = field(default=10.0, metadata={"help": "dselect/comet: smooth-step width gamma"})
    entropy_reg: float = field(default=0.1, metadata={"help": "dselect/comet: entropy regulariser lambda"})
    sinkhorn_iters: int = field(default=20, metadata={"help": "s-base: Sinkhorn iterations"})
    ot_gamma: float = field(default=1.0, metadata={"help": "sparse-ot: L2 regularisation gamma"})
    ot_orientation: str = field(default="tokens", metadata={
        "help": "sparse-ot: tokens (tokens choose k experts) or experts (experts choose up to capacity)"})
    ot_combine: str = field(default="scores", metadata={
        "help": "sparse-ot: combine weights = softmax scores on the plan's support, or the plan itself"})
    ot_method: str = field(default="newton", metadata={"help": "sparse-ot: solver, newton or adam"})
    ot_iters: int = field(default=30, metadata={"help": "sparse-ot: solver iterations (max for newton)"})
    ot_group: int = field(default=512, metadata={"help": "sparse-ot: tokens per OT problem (batched)"})
    ls_fraction: float = field(default=0.1, metadata={
        "help": "local search: share of training (from the start) during which the permutation is learned"})
    ls_temp_start: float = field(default=1e-3, metadata={"help": "local search: Sinkhorn temperature at start"})
    ls_temp_end: float = field(default=1e-7, metadata={"help": "local search: temperature at the end (log-linear)"})
    ls_iters_start: int = field(default=20, metadata={"help": "local search: Sinkhorn iterations at start"})
    ls_iters_end: int = field(default=150, metadata={"help": "local search: Sinkhorn iterations at the end"})
    ls_entropy: float = field(default=1e-4, metadata={"help": "local search: permutation entropy penalty"})
    ls_gumbel: float = field(default=0.0, metadata={"help": "local search: Gumbel noise scale (0 = none)"})

    def __post_init__(self):
        one_of(self, "gate", GATES)
        positive(self, "experts", "k", "capacity_factor", "smooth_gamma", "sinkhorn_iters", "ot_gamma",
                 "ot_iters", "ot_group", "ls_temp_start", "ls_temp_end", "ls_iters_start", "ls_iters_end")
        require(self.k <= self.experts, "k", f"k = {self.k} exceeds experts = {self.experts}",
                "pass --k at most --experts")
        one_of(self, "ot_orientation", ("tokens", "experts"))
        one_of(self, "ot_combine", ("scores", "plan"))
        one_of(self, "ot_method", ("newton", "adam"))
        require(0 <= self.ls_fraction <= 1, "ls_fraction", f"must be in [0, 1], got {self.ls_fraction}",
                "pass --ls-fraction 0.1 (the permutation is learned in the first 10% of training)")
        for f in ("balance_coef", "z_coef", "entropy_reg", "ls_entropy", "ls_gumbel"):
            require(getattr(self, f) >= 0, f, f"must be >= 0, got {getattr(self, f)}", f"pass --{f.replace('_', '-')} 0 or more")
        if self.gate in TREE_GATES:
            require(self.experts >= 2 and self.experts & (self.experts - 1) == 0, "experts",
                    f"{self.gate} needs a power of two experts (binary codes / trees), got {self.experts}",
                    "pass --experts 8, 16 or 32")
        if self.gate == "sparse-ot" and self.ot_orientation == "tokens":
            require(self.ot_group * self.k >= self.experts, "ot_group",
                    f"{self.ot_group} tokens x k = {self.k} cannot cover {self.experts} experts",
                    "raise --ot-group")
