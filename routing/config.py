"""Routing configs (pure dataclasses, no torch import, so `workbench moe --help` is fast).

GateConfig: which gate and the knobs of each method; MoETrainConfig: one training run (nests a
GateConfig as `routing`); BenchConfig: gates x seeds; SolverBenchConfig: OT solver micro-benchmarks.
CLI flags map one-to-one onto fields."""

from __future__ import annotations

from dataclasses import dataclass, field

from workbench.config import one_of, positive, require

GATES = ("topk", "hash", "expert-choice", "base", "s-base", "dselect", "comet", "sparse-ot")
# The authors' COMET / local-search choices that `--ablate` can revert, each to the version before it
# (docs/routing.md, "COMET ablation"): no node biases; permutation logits U(0, 1e-3); Hungarian on the
# logits instead of the last soft permutation; one permutation-entropy term (H(Pi)) instead of two.
ABLATIONS = ("node-bias", "perm-init", "harden-logits", "perm-entropy")


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
        "help": "expert-choice and sparse-ot: expert capacity = ceil(cf * N * k / E) tokens (N = tokens routed "
                "together, a sparse-ot group); vmoe's capacity factor counts k inside it: for vmoe's experts "
                "orientation with factor C pass C / k"})
    smooth_gamma: float = field(default=10.0, metadata={"help": "dselect/comet: smooth-step width gamma"})
    entropy_reg: float = field(default=0.1, metadata={"help": "dselect/comet: entropy regulariser lambda"})
    sinkhorn_iters: int = field(default=20, metadata={"help": "s-base: Sinkhorn iterations"})
    ot_gamma: float = field(default=1.0, metadata={
        "help": "sparse-ot: L2 regularisation gamma with vmoe's marginals (1 per token, G/E per expert); 1 = vmoe's"})
    ot_capacity_multiple_of: int = field(default=4, metadata={
        "help": "sparse-ot: round expert capacities up to a multiple of this (vmoe: 4; 1 = no rounding)"})
    ot_orientation: str = field(default="tokens", metadata={
        "help": "sparse-ot: tokens (tokens choose k experts) or experts (experts choose up to capacity)"})
    ot_combine: str = field(default="scores", metadata={
        "help": "sparse-ot: combine weights = softmax scores on the plan's support, or the plan itself"})
    ot_method: str = field(default="bfgs", metadata={"help": "sparse-ot: solver, bfgs, newton or adam"})
    ot_iters: int = field(default=50, metadata={"help": "sparse-ot: max solver iterations (adam: its fixed step count)"})
    ot_compile: str = field(default="auto", metadata={
        "help": "sparse-ot: torch.compile the solver: auto (problems of >= 4,096 cost entries, from the 4th solve "
                "of a problem family on; each build announces itself on stderr and takes ~15-30 s on an idle CPU), "
                "on or off"})
    ot_group: int = field(default=512, metadata={"help": "sparse-ot: tokens per OT problem (batched)"})
    ls_fraction: float = field(default=0.1, metadata={
        "help": "local search: share of training (from the start) during which the permutation is learned"})
    ls_temp_start: float = field(default=1e-3, metadata={"help": "local search: Sinkhorn temperature at start"})
    ls_temp_end: float = field(default=1e-7, metadata={"help": "local search: temperature at the end (log-linear)"})
    ls_iters_start: int = field(default=20, metadata={"help": "local search: Sinkhorn iterations at start"})
    ls_iters_end: int = field(default=150, metadata={"help": "local search: Sinkhorn iterations at the end"})
    ls_entropy: float = field(default=1e-4, metadata={"help": "local search: permutation entropy penalty"})
    ls_gumbel: float = field(default=0.0, metadata={"help": "local search: Gumbel noise scale (0 = none)"})
    ablate: str = field(default="", metadata={
        "help": f"ablation only: comma-separated authors' COMET/local-search choices to revert to the earlier "
                f"version ({', '.join(ABLATIONS)})"})
    center_input: bool = field(default=False, metadata={
        "help": "comet: subtract a running mean of the gate input before the trees (against the collapse onto "
                "~2 experts on MovieLens; not in the authors' method)"})

    def __post_init__(self):
        one_of(self, "gate", GATES)
        positive(self, "experts", "k", "capacity_factor", "smooth_gamma", "sinkhorn_iters", "ot_gamma",
                 "ot_capacity_multiple_of",
                 "ot_iters", "ot_group", "ls_temp_start", "ls_temp_end", "ls_iters_start", "ls_iters_end")
        require(self.k <= self.experts, "k", f"k = {self.k} exceeds experts = {self.experts}",
                "pass --k at most --experts")
        one_of(self, "ot_orientation", ("tokens", "experts"))
        for a in self.ablations():
            require(a in ABLATIONS, "ablate", f"unknown ablation {a!r}", f"choose from {', '.join(ABLATIONS)}")
        one_of(self, "ot_combine", ("scores", "plan"))
        one_of(self, "ot_method", ("bfgs", "newton", "adam"))
        one_of(self, "ot_compile", ("auto", "on", "off"))
        require(0 <= self.ls_fraction <= 1, "ls_fraction", f"must be in [0, 1], got {self.ls_fraction}",
                "pass --ls-fraction 0.1 (the permutation is learned in the first 10% of training)")
        for f in ("balance_coef", "z_coef", "entropy_reg", "ls_entropy", "ls_gumbel"):
            require(getattr(self, f) >= 0, f, f"must be >= 0, got {getattr(self, f)}", f"pass --{f.replace('_', '-')} 0 or more")
        if self.gate == "dselect":
            require(self.experts >= 2 and self.experts & (self.experts - 1) == 0, "experts",
                    f"dselect needs a power of two experts (binary codes), got {self.experts}",
                    "pass --experts 8, 16 or 32, or use --gate comet (any number of experts)")
        if self.gate == "comet":
            require(self.experts >= 2, "experts", f"comet needs at least 2 experts (one split), got {self.experts}",
                    "pass --experts 2 or more")
        if self.gate == "sparse-ot" and self.ot_orientation == "tokens":
            require(self.ot_group * self.k >= self.experts, "ot_group",
                    f"{self.ot_group} tokens x k = {self.k} cannot cover {self.experts} experts",
                    "raise --ot-group")

    def ablations(self) -> set[str]:
        return {a.strip() for a in self.ablate.split(",") if a.strip()}

    @property
    def tag(self) -> str:
        """The gate's name in benches and results: comet, comet+ (with local search), ..."""
        return self.gate + ("+" if self.local_search else "")


TASKS = ("movielens", "synthetic", "planted", "toy")
MIN_MOVIELENS_EXAMPLES = 1000  # 100 validation and 100 test examples: both classes of both tasks, in practice


@dataclass
class MoETrainConfig:
    task: str = field(default="synthetic", metadata={"help": f"task: {', '.join(TASKS)}"})
    routing: GateConfig = field(default_factory=GateConfig, metadata={"help": "gate settings (flags above)"})
    epochs: int = field(default=5, metadata={"help": "training epochs"})
    batch_size: int = field(default=512, metadata={"help": "examples per step (= tokens routed together)"})
    lr: float = field(default=2e-3, metadata={"help": "Adam learning rate"})
    seed: int = field(default=0, metadata={"help": "model seed (init, batch order, noise)"})
    data_seed: int = field(default=0, metadata={"help": "data seed (split, negatives, synthetic draws)"})
    d_emb: int = field(default=8, metadata={"help": "movielens: embedding size per categorical feature"})
    d_hidden: int = field(default=32, metadata={"help": "expert MLP hidden size"})
    d_expert_out: int = field(default=16, metadata={"help": "expert output size (tower input)"})
    n_train: int = field(default=8000, metadata={"help": "synthetic/planted: training examples"})
    max_examples: int = field(default=0, metadata={"help": "movielens: use this many examples (0 = all 200k)"})
    correlation: float = field(default=0.5, metadata={"help": "synthetic: task correlation rho in [-1, 1]"})
    clusters: int = field(default=8, metadata={"help": "planted: number of clusters"})
    steps: int = field(default=300, metadata={
        "help": "toy: optimizer steps (a batch = --batch-size toy-world sequences; --epochs is not used)"})
    d_model: int = field(default=64, metadata={"help": "toy: transformer width"})
    n_layers: int = field(default=2, metadata={"help": "toy: transformer layers, each MLP replaced by a MoE"})
    n_heads: int = field(default=4, metadata={"help": "toy: attention heads"})
    ioi_prompts: int = field(default=2000, metadata={
        "help": "toy: IOI prompts for the accuracy and expert-specialisation evaluation"})
    device: str = field(default="cpu", metadata={"help": "torch device (cpu, cuda, ...)"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch default)"})
    log_every: int = field(default=50, metadata={"help": "steps between metrics.jsonl rows"})
    checkpoint_every: int = field(default=500, metadata={
        "help": "steps between checkpoints (also at every epoch end and the last step; 0 = only those)"})
    wandb_project: str | None = field(default=None, metadata={
        "help": "also log to this wandb project (offline unless wandb is configured)"})
    wandb_tags: tuple[str, ...] = field(default=(), metadata={"help": "wandb tags of the run"})
    wandb_group: str | None = field(default=None, metadata={"help": "wandb group, e.g. one per sweep"})
    name: str = field(default="", metadata={"help": "run name (default: moe-<task>-<gate>-s<seed>-<time>)"})
    out: str = field(default="runs", metadata={"help": "runs root directory"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self):
        if isinstance(self.routing, dict):
            self.routing = GateConfig(**self.routing)
        self.wandb_tags = tuple(self.wandb_tags or ())
        one_of(self, "task", TASKS)
        positive(self, "epochs", "batch_size", "lr", "d_emb", "d_hidden", "d_expert_out", "n_train", "log_every",
                 "clusters", "steps", "d_model", "n_layers", "n_heads", "ioi_prompts")
        require(self.d_model % self.n_heads == 0, "d_model", f"{self.d_model} is not divisible by n_heads = {self.n_heads}",
                "pass --d-model a multiple of --n-heads")
        require(-1 <= self.correlation <= 1, "correlation", f"must be in [-1, 1], got {self.correlation}",
                "pass --correlation 0.5")
        require(self.checkpoint_every >= 0, "checkpoint_every", f"must be >= 0, got {self.checkpoint_every}",
                "pass --checkpoint-every 500 (or 0: at epoch ends only)")
        require(self.max_examples == 0 or self.task == "movielens", "max_examples",
                f"applies to --task movielens only, not {self.task}",
                "drop --max-examples, or use --n-train for the synthetic and planted tasks")
        require(self.max_examples >= 0 and self.threads >= 0, "max_examples/threads", "must be >= 0", "pass 0 or more")
        if self.task == "movielens" and self.max_examples:
            n = self.max_examples
            val, test = int(0.9 * n) - int(0.8 * n), n - int(0.9 * n)  # the 80/10/10 split of routing.data.movielens
            require(n >= MIN_MOVIELENS_EXAMPLES, "max_examples",
                    f"{n} examples leave {val} validation and {test} test examples, too few to score ROC-AUC",
                    f"pass --max-examples {MIN_MOVIELENS_EXAMPLES} or more, or 0 for all 200,000")


DEFAULT_GATES = "hash,hash+,topk,topk+,dselect,dselect+,comet,comet+,expert-choice,base,s-base,sparse-ot"


@dataclass
class BenchConfig:
    gates: str = field(default=DEFAULT_GATES, metadata={"help": "comma-separated gates; suffix + = local search"})
    seeds: int = field(default=5, metadata={"help": "seeds per gate (0..seeds-1)"})
    bench_name: str = field(default="", metadata={"help": "bench directory name (default: bench-<task>-<time>)"})

    def __post_init__(self):
        for g in self.gate_list():
            require(g.rstrip("+") in GATES, "gates", f"unknown gate {g!r}", f"choose from {', '.join(GATES)}")
        require(self.seeds >= 1, "seeds", f"must be >= 1, got {self.seeds}", "pass --seeds 5")

    def gate_list(self) -> list[str]:
        return [g.strip() for g in self.gates.split(",") if g.strip()]


@dataclass
class SolverBenchConfig:
    rows: int = field(default=16, metadata={"help": "OT rows (experts)"})
    cols: int = field(default=2048, metadata={"help": "OT columns (tokens) of the single-problem comparison"})
    k: int = field(default=2, metadata={"help": "max nonzeros per column"})
    batch: int = field(default=64, metadata={"help": "problems in the batched case"})
    batch_cols: int = field(default=512, metadata={"help": "tokens per problem in the batched case"})
    problems: int = field(default=4, metadata={"help": "random single problems per regularisation"})
    repeats: int = field(default=3, metadata={"help": "timed runs of each solve, ours and POT's (the best is reported)"})
    threads: int = field(default=1, metadata={"help": "torch threads (1 = fair vs single-threaded POT)"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    gates: bool = field(default=True, metadata={"help": "also time every gate (forward + backward)"})
    solver: bool = field(default=True, metadata={"help": "run the solver comparison"})
    device: str = field(default="cpu", metadata={
        "help": "torch device of our solver in the batched case (POT always runs on the CPU), e.g. cuda"})

    def __post_init__(self):
        positive(self, "rows", "cols", "k", "batch", "batch_cols", "problems", "repeats", "threads")
