"""The IOI harness's configs (``workbench ioi locate`` / ``workbench ioi eval``) and the constants their
defaults and checks use. No torch here, so ``workbench ioi --help`` is fast; the modules that use the
constants import them from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workbench.config import positive, require

ATTRIBUTES = ("IO", "S", "Pos")  # the paper's attributes: edited, scored for interpretability
EXTRA_ATTRIBUTES = ("Template",)  # optional nuisance attribute (the frame family) a supervised dictionary may also model
K_VALUES = (1, 2, 4, 8, 16)  # numbers of SAE features an edit may change (evals.control)
TAUS = (0.5, 0.6, 0.8)  # activation thresholds, fraction of a feature's max (evals.interpretability)


@dataclass
class LocateConfig:
    model: str = field(default="toy-ioi", metadata={"help": "toy-ioi, a TransformerLens name (gpt2, ...) or a model dir"})
    n_prompts: int = field(default=400, metadata={"help": "eval prompts used for discovery"})
    seed: int = field(default=0, metadata={"help": "seed for prompts"})
    min_effect: float = field(default=0.1, metadata={"help": "a location/head is significant when patching or ablating it drops LD by this fraction"})
    qkv_heads: int = field(default=8, metadata={"help": "patch q/k/v of this many strongest heads (by their hook_z effect)"})
    max_cross_sections: int = field(default=8, metadata={"help": "keep at most this many named cross-sections (largest group effect first)"})
    device: str = field(default="cpu", metadata={"help": "torch device"})

    def __post_init__(self):
        positive(self, "n_prompts", "qkv_heads", "max_cross_sections")
        require(0 < self.min_effect < 1, "min_effect", f"must be in (0, 1), got {self.min_effect}", "pass e.g. --min-effect 0.1")


@dataclass
class EvalConfig:
    model: str = field(default="toy-ioi", metadata={"help": "toy-ioi, a TransformerLens name (gpt2, ...) or a model dir"})
    n_train: int = field(default=2000, metadata={"help": "train prompts (supervised dictionaries, feature F1 for edits)"})
    n_eval: int = field(default=500, metadata={"help": "eval prompts (every metric)"})
    seed: int = field(default=0, metadata={"help": "seed: train prompts use it, eval seed+1, counterfactuals seed+2"})
    ks: list[int] = field(default_factory=lambda: list(K_VALUES), metadata={"help": "numbers of SAE features an edit may change"})
    taus: list[float] = field(default_factory=lambda: list(TAUS), metadata={"help": "activation thresholds (fraction of a feature's max) for precision/recall/F1"})
    attributes: list[str] = field(default_factory=lambda: list(ATTRIBUTES), metadata={"help": "attributes the supervised dictionaries model: IO S Pos (the paper's), optionally plus Template"})
    f1_threshold: float = field(default=0.8, metadata={"help": "coverage: a value is covered when some feature has F1 >= this (a feature active on every prompt already scores 2/3 on a balanced binary attribute)"})
    device: str = field(default="cpu", metadata={"help": "torch device"})

    def __post_init__(self):
        positive(self, "n_train", "n_eval")
        require(all(k > 0 for k in self.ks), "ks", f"must be positive, got {self.ks}", "pass e.g. --ks 1 2 4 8 16")
        require(set(ATTRIBUTES) <= set(self.attributes) <= set(ATTRIBUTES + EXTRA_ATTRIBUTES), "attributes",
                f"must contain IO, S, Pos and nothing but {', '.join(EXTRA_ATTRIBUTES)} besides, got {self.attributes}",
                "pass --attributes IO S Pos [Template]")
        require(all(0 <= t < 1 for t in self.taus), "taus", f"must be in [0, 1), got {self.taus}", "pass e.g. --taus 0.5 0.6 0.8")
