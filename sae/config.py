"""SAE and training configs: plain dataclasses, one CLI flag per field (``--k 32``).

``SAEConfig`` describes the autoencoder (what is saved with it); ``TrainConfig`` the training run and
nests the activation source (``workbench.config.ActsConfig``) and the SAE; ``AnalyzeConfig`` the
feature-browser analysis (``sae analyze``). No torch here, so ``workbench sae --help`` is fast. Validation happens when a
config is built; checks that need the hook width (``k <= d_sae``, ``d_in`` against the hook) run in
:meth:`SAEConfig.resolve` as soon as the width is known, before any training step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from workbench.config import ActsConfig, from_dict, one_of, positive, require

NORMALIZE = ("none", "expected_norm", "per_token")  # input normalisation options (sae/normalize.py)

ARCHS = ("topk", "feature-choice", "mutual-choice", "relu-l1", "routed")
AUX = ("none", "aux_k", "aux_zipf")
PRECISIONS = ("auto", "float32", "bfloat16")
# --normalize auto: each architecture's default, chosen from measurement (docs/sae.md, "Choosing the defaults")
DEFAULT_NORMALIZE = {"topk": "expected_norm", "feature-choice": "per_token", "mutual-choice": "per_token",
                     "relu-l1": "expected_norm", "routed": "expected_norm"}


@dataclass
class SAEConfig:
    arch: str = field(default="topk", metadata={"help": "allocation: topk (k per token), feature-choice (m tokens per latent), mutual-choice (k*N entries per batch), relu-l1 (classic)"})
    k: int = field(default=8, metadata={"help": "mean active latents per token (the budget is k*N per batch for every arch but relu-l1)"})
    expansion: int = field(default=8, metadata={"help": "d_sae = expansion * d_in (unless --d-sae is given)"})
    d_sae: int | None = field(default=None, metadata={"help": "number of latents (overrides --expansion)"})
    d_in: int | None = field(default=None, metadata={"help": "input width; default: read from the hook (an explicit value must match it)"})
    capacity: str = field(default="uniform", metadata={"help": "feature-choice capacities, summing to k*N exactly: uniform (k*N/d_sae each, rounded) or zipf (m_r proportional to r^-zipf_alpha by usage rank, at most N)"})
    zipf_alpha: float = field(default=1.0, metadata={"help": "exponent of the Zipf profiles (zipf capacities and aux_zipf targets)"})
    l1_coeff: float = field(default=1e-3, metadata={"help": "relu-l1: weight of the L1 penalty on the codes"})
    kernel: str = field(default="auto", metadata={"help": "sparse (gather-sum decoder, gradients only for active pairs), dense (reference autograd), auto (sparse except relu-l1)"})
    precision: str = field(default="auto", metadata={"help": "sparse kernel: dtype of the encoder matmul and the allocation over the (N, d_sae) pre-activations: float32, bfloat16 (tensor cores; the codes at the chosen pairs are recomputed in float32, so only near-ties can be chosen differently), auto (bfloat16 on CUDA, float32 elsewhere)"})
    threshold_ema: float = field(default=0.05, metadata={"help": "feature/mutual-choice: weight of each batch in the running inference threshold (smallest selected activation)"})
    gate: str = field(default="topk", metadata={"help": "routed: the router, any gate of routing/gates (topk, expert-choice, comet, sparse-ot, ...)"})
    experts: int = field(default=8, metadata={"help": "routed: expert sub-dictionaries; expert e owns latents [e*d_sae/experts, (e+1)*d_sae/experts)"})
    experts_per_token: int = field(default=1, metadata={"help": "routed: experts the gate picks per token (Switch SAE: 1; expert-choice: sets the capacity)"})
    balance_coef: float = field(default=0.01, metadata={"help": "routed: Switch load-balancing loss weight alpha (alpha * E * sum_i f_i P_i, added to FVU)"})
    capacity_factor: float = field(default=1.0, metadata={"help": "routed, gates expert-choice and sparse-ot: expert capacity = ceil(cf * N * experts_per_token / experts) tokens"})
    normalize: str = field(default="auto", metadata={"help": "input normalisation: none, expected_norm (one scalar, E|x| = sqrt(d_in); SAELens expected_average_only_in), per_token (every token at norm sqrt(d_in), output scaled back; SAELens constant_norm_rescale), auto (per arch: " + ", ".join(f"{a} {n}" for a, n in DEFAULT_NORMALIZE.items()) + ")"})

    def __post_init__(self):
        one_of(self, "arch", ARCHS)
        one_of(self, "normalize", ("auto", *NORMALIZE))
        if self.normalize == "auto":  # resolved here, so a saved config says what was used
            self.normalize = DEFAULT_NORMALIZE[self.arch]
        one_of(self, "capacity", ("uniform", "zipf"))
        one_of(self, "kernel", ("auto", "sparse", "dense"))
        one_of(self, "precision", PRECISIONS)
        positive(self, "k", "expansion", "zipf_alpha")
        for name in ("d_sae", "d_in"):
            v = getattr(self, name)
            require(v is None or v > 0, name, f"must be positive, got {v}", f"pass --{name.replace('_', '-')} > 0 or leave it out")
        require(self.l1_coeff >= 0, "l1_coeff", f"must be >= 0, got {self.l1_coeff}", "pass --l1-coeff >= 0")
        require(0 < self.threshold_ema <= 1, "threshold_ema", f"must be in (0, 1], got {self.threshold_ema}", "pass e.g. --threshold-ema 0.05")
        require(self.capacity == "uniform" or self.arch == "feature-choice", "capacity",
                f"--capacity {self.capacity} only applies to --arch feature-choice", "drop --capacity or use --arch feature-choice")
        if self.arch == "routed":
            positive(self, "experts", "experts_per_token", "capacity_factor")
            require(self.experts_per_token <= self.experts, "experts_per_token", f"{self.experts_per_token} experts per token "
                    f"out of {self.experts} experts", f"pass --experts-per-token <= {self.experts}")
            self.gate_config()  # the gate's own checks (known gate, experts_per_token <= experts, ...)
            require(self.balance_coef >= 0, "balance_coef", f"must be >= 0, got {self.balance_coef}", "pass --balance-coef 0.01 (0: off)")
        if self.d_sae is not None:
            self._check_k(self.d_sae)

    def gate_config(self):
        """routed: the router's routing.config.GateConfig (tokens x experts; its k = experts_per_token)."""
        from routing.config import GateConfig  # no torch: a plain dataclass

        return GateConfig(gate=self.gate, experts=self.experts, k=self.experts_per_token, balance_coef=self.balance_coef,
                          capacity_factor=self.capacity_factor)

    def _check_k(self, d_sae: int) -> None:
        require(self.k <= d_sae, "k", f"k={self.k} is larger than d_sae={d_sae}", f"pass --k <= {d_sae} or a larger --expansion / --d-sae")
        if self.arch == "routed":
            require(self.experts <= d_sae, "experts", f"{self.experts} experts cannot share d_sae={d_sae} latents",
                    f"pass --experts <= {d_sae} or a larger --expansion / --d-sae")
            require(d_sae % self.experts == 0, "experts", f"d_sae={d_sae} latents do not split evenly over {self.experts} experts",
                    "pass --experts dividing d_sae (e.g. a power of two) or a --d-sae that is a multiple of --experts")
            per = d_sae // self.experts
            require(per >= self.k, "experts", f"each expert holds d_sae/experts = {per} latents, below k={self.k}: a token "
                    "routed to one expert could not get its k latents", f"pass --experts <= {d_sae // self.k} or a smaller --k")

    def resolve(self, d_in: int, source: str = "the hook") -> "SAEConfig":
        """This config with d_in and d_sae filled in from the activation width; checks k <= d_sae."""
        require(self.d_in is None or self.d_in == d_in, "d_in",
                f"--d-in {self.d_in} does not match {source}, whose activations have width {d_in}",
                "drop --d-in (it is read from the hook) or choose a hook of that width")
        d_sae = self.d_sae or self.expansion * d_in
        self._check_k(d_sae)
        return replace(self, d_in=d_in, d_sae=d_sae)

    @property
    def kernel_used(self) -> str:
        if self.kernel != "auto":
            return self.kernel
        return "dense" if self.arch == "relu-l1" else "sparse"


@dataclass
class TrainConfig:
    acts: ActsConfig = field(default_factory=ActsConfig, metadata={"help": "activation source"})
    sae: SAEConfig = field(default_factory=SAEConfig, metadata={"help": "the autoencoder"})
    tokens: int = field(default=2_000_000, metadata={"help": "training tokens (steps = tokens // batch_size)"})
    lr: float | None = field(default=None, metadata={"help": "Adam learning rate; default 2e-4 / sqrt(d_sae / 2^14) (Gao et al. 2024)"})
    warmup_steps: int = field(default=50, metadata={"help": "linear learning-rate warm-up steps"})
    decay_frac: float = field(default=0.2, metadata={"help": "fraction of steps at the end with linear decay of the learning rate to 0"})
    aux: str = field(default="aux_k", metadata={"help": "auxiliary loss: none, aux_k (dead latents, Gao et al.), aux_zipf (under-used latents, ours; see docs/sae.md)"})
    aux_coeff: float = field(default=1 / 32, metadata={"help": "weight of the auxiliary loss"})
    k_aux: int | None = field(default=None, metadata={"help": "latents used by the auxiliary loss per token; default d_in // 2"})
    cover_coeff: float = field(default=1 / 32, metadata={"help": "weight of the coverage loss (ours): tokens the allocation left without any latent reconstruct their residual from their top-k latents (feature/mutual choice; 0 turns it off)"})
    dead_window: int = field(default=1_000_000, metadata={"help": "a latent is dead if it fired on none of this many consecutive tokens: the last ones in training (aux_k, aux_zipf), held-out ones at evaluation"})
    density_ema: float = field(default=0.01, metadata={"help": "weight of each batch in the running latent usage (densities; feature-choice: activation mass), which ranks latents for aux_zipf and zipf capacities"})
    b_dec_init: str = field(default="median", metadata={"help": "b_dec initialisation from the first batch: median (geometric), mean, zero"})
    log_every: int = field(default=20, metadata={"help": "steps between logged metrics"})
    ce_every: int = field(default=0, metadata={"help": "steps between CE-loss-recovered evaluations during training (0: only at the end)"})
    eval_tokens: int = field(default=65_536, metadata={"help": "held-out tokens for the evaluation at the end (and CE during training)"})
    checkpoint_every: int = field(default=200, metadata={"help": "steps between checkpoints (atomic; the last two are kept)"})
    cache: str | None = field(default=None, metadata={"help": "read activations from this cache (made by `workbench acts cache`) instead of streaming"})
    prefetch: int | None = field(default=None, metadata={"help": "batches made ahead in a background thread (text, model forward, shuffle) while the SAE trains, in one process; default 2 on a GPU, 0 (off) on the CPU"})
    wandb_project: str | None = field(default=None, metadata={"help": "also log to this wandb project (offline unless wandb is configured)"})
    distribute: str = field(default="data", metadata={"help": "under torchrun: data (DDP: every process trains every SAE on its shard of each global batch) or hooks (one process per group of --hook values, each trained on the activations of all processes)"})
    backend: str = field(default="auto", metadata={"help": "torch.distributed backend under torchrun: auto (nccl on cuda, gloo on cpu), gloo, nccl"})
    wandb_tags: tuple[str, ...] = field(default=(), metadata={"help": "wandb tags of the run (e.g. --wandb-tags sweep1 topk)"})
    wandb_group: str | None = field(default=None, metadata={"help": "wandb group, e.g. one per sweep"})
    name: str | None = field(default=None, metadata={"help": "run name (default: sae-<time>)"})
    runs_dir: str = field(default="runs", metadata={"help": "directory holding run directories"})

    def __post_init__(self):
        self.wandb_tags = tuple(self.wandb_tags or ())
        positive(self, "tokens", "log_every", "checkpoint_every", "eval_tokens")
        one_of(self, "aux", AUX)
        one_of(self, "b_dec_init", ("median", "mean", "zero"))
        one_of(self, "distribute", ("data", "hooks"))
        one_of(self, "backend", ("auto", "gloo", "nccl"))
        require(self.tokens >= self.acts.batch_size, "tokens", f"{self.tokens} tokens is less than one batch of {self.acts.batch_size}",
                "pass more --tokens or a smaller --batch-size")
        require(self.lr is None or self.lr > 0, "lr", f"must be positive, got {self.lr}", "pass --lr > 0 or leave it out")
        require(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}", "pass --warmup-steps >= 0")
        require(0 <= self.decay_frac <= 1, "decay_frac", f"must be in [0, 1], got {self.decay_frac}", "pass --decay-frac in [0, 1]")
        require(self.aux_coeff >= 0, "aux_coeff", f"must be >= 0, got {self.aux_coeff}", "pass --aux-coeff >= 0")
        require(self.cover_coeff >= 0, "cover_coeff", f"must be >= 0, got {self.cover_coeff}", "pass --cover-coeff >= 0 (0: off)")
        require(self.prefetch is None or self.prefetch >= 0, "prefetch", f"must be >= 0, got {self.prefetch}", "pass --prefetch 0 (off) or more, or leave it out")
        require(self.k_aux is None or self.k_aux > 0, "k_aux", f"must be positive, got {self.k_aux}", "pass --k-aux > 0 or leave it out")
        require(self.dead_window > 0, "dead_window", f"must be positive, got {self.dead_window}", "pass --dead-window > 0 (tokens)")
        require(0 < self.density_ema <= 1, "density_ema", f"must be in (0, 1], got {self.density_ema}", "pass e.g. --density-ema 0.01")
        require(self.ce_every >= 0, "ce_every", f"must be >= 0, got {self.ce_every}", "pass --ce-every 0 to evaluate only at the end")
        if self.sae.arch == "routed" and self.sae.gate == "expert-choice":
            require(self.acts.batch_size >= self.sae.experts, "batch_size", f"expert-choice routes a batch of "
                    f"{self.acts.batch_size} tokens to {self.sae.experts} experts, and every expert must pick a token",
                    f"pass --batch-size >= {self.sae.experts} or fewer --experts")
        if self.sae.d_sae is not None and self.k_aux is not None:
            require(self.k_aux <= self.sae.d_sae, "k_aux", f"k_aux={self.k_aux} is larger than d_sae={self.sae.d_sae}", "pass a smaller --k-aux")

    @property
    def steps(self) -> int:
        return self.tokens // self.acts.batch_size

    def learning_rate(self, d_sae: int) -> float:
        """The configured lr, or Gao et al.'s scaling lr = 2e-4 / sqrt(d_sae / 2^14)."""
        return self.lr if self.lr is not None else 2e-4 / math.sqrt(d_sae / 2 ** 14)

    def aux_k(self, d_in: int, d_sae: int) -> int:
        return min(self.k_aux or max(1, d_in // 2), d_sae)


@dataclass
class AnalyzeConfig:
    tokens: int = field(default=32_768, metadata={"help": "held-out tokens to run the SAE over"})
    top_n: int = field(default=12, metadata={"help": "top-activating contexts stored per latent"})
    quantiles: int = field(default=4, metadata={"help": "activation quantiles sampled per latent besides its top contexts (0: none): quantile q holds the activations ranked in the q-th 1/quantiles of its nonzero ones, strongest first"})
    per_quantile: int = field(default=3, metadata={"help": "contexts stored per activation quantile"})
    bins: int = field(default=24, metadata={"help": "bins of each latent's activation histogram"})
    n_logits: int = field(default=10, metadata={"help": "promoted / suppressed output tokens stored per latent"})
    before: int = field(default=16, metadata={"help": "context tokens shown before the activating token"})
    after: int = field(default=4, metadata={"help": "context tokens shown after the activating token"})
    mode: str = field(default="auto", metadata={"help": "allocation mode: auto (threshold for feature/mutual choice, else batch), batch, threshold"})
    seq_batch: int = field(default=64, metadata={"help": "sequences per model forward pass"})
    device: str | None = field(default=None, metadata={"help": "torch device (default: the run's)"})

    def __post_init__(self):
        positive(self, "tokens", "top_n", "bins", "n_logits", "seq_batch", "per_quantile")
        require(self.quantiles >= 0, "quantiles", f"must be >= 0, got {self.quantiles}", "pass e.g. --quantiles 4 (0: none)")
        require(self.before >= 0 and self.after >= 0, "before/after", "must be >= 0", "pass --before 16 --after 4")
        one_of(self, "mode", ("auto", "batch", "threshold"))
def load_train_config(stored: dict) -> TrainConfig:
    """A TrainConfig from a run's config.json; runs made before normalize moved into SAEConfig still load."""
    stored = dict(stored)
    if "normalize" in stored:  # legacy: TrainConfig.normalize ("expected_norm" then meant E|x|^2 = d_in, folded in)
        stored["sae"] = {**stored.get("sae", {}), "normalize": stored.pop("normalize")}
    return from_dict(TrainConfig, stored)
