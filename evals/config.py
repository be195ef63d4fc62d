"""The IOI harness's configs (``workbench ioi locate`` / ``workbench ioi eval``) and the constants their
defaults and checks use. No torch here, so ``workbench ioi --help`` is fast; the modules that use the
constants import them from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workbench.config import one_of, positive, require
from workbench.grammar import S2_FORMS  # how prompts say S2: its name, or "the former" / "the latter"
from workbench.grammar import SPLITS as EVAL_SPLITS  # grammar splits of the eval prompts (grammar imports no torch)

ATTRIBUTES = ("IO", "S", "Pos")  # the paper's attributes: edited, scored for interpretability
EXTRA_ATTRIBUTES = ("Template",)  # optional nuisance attribute (the frame family) a supervised dictionary may also model
# every attribute a prompt carries (what the interpretation space of evals.interpretation searches):
# A / B = the first / second name of the opening clause (the authors' name1 / name2), the genders of
# IO and S (from workbench.toyworld.GENDER when the toy world has it), place, object and template
PROMPT_ATTRIBUTES = ("IO", "S", "Pos", "A", "B", "IO gender", "S gender", "Place", "Object", "Template")
K_VALUES = (2, 4, 8, 16)  # the paper's edit sizes: SAE features an edit changes (evals.control)
F1_THRESHOLDS = (0.5, 0.6, 0.8)  # the paper's F1 thresholds (evals.interpretability)
N_REFIT = 8  # default refits of the supervised dictionaries (evals.refit): a standard deviation from 8 is good to about 25%
UNION_MAX = 10  # the authors' max_group_size in autointerp_fast: largest union of names searched
S2_HELP = ("how the prompts say S2: name (S's name again, the classic IOI prompt) or ordinal (\"the former\" / "
           "\"the latter\": S is known only by its place in the pair, so the model must use Pos)")  # --s2 of locate and eval
# interpretation kinds searched for each feature (evals.interpretation)
KINDS = ("IO", "S", "Pos", "IO & Pos", "S & Pos", "IO union", "S union", "Name", "A", "B",
         "IO gender", "S gender", "Place", "Object", "Template")


@dataclass
class LocateConfig:
    model: str = field(default="toy-ioi", metadata={"help": "toy-ioi, a TransformerLens name (gpt2, ...) or a model dir"})
    n_prompts: int = field(default=400, metadata={"help": "eval prompts used for discovery"})
    seed: int = field(default=0, metadata={"help": "seed for prompts"})
    s2: str = field(default="name", metadata={"help": S2_HELP})
    min_effect: float = field(default=0.1, metadata={"help": "a location/head is significant when patching or ablating it drops LD by this fraction"})
    qkv_heads: int = field(default=8, metadata={"help": "patch q/k/v of this many strongest heads (by their hook_z effect)"})
    max_cross_sections: int = field(default=8, metadata={"help": "keep at most this many named cross-sections (largest group effect first)"})
    device: str = field(default="cpu", metadata={"help": "torch device"})

    def __post_init__(self):
        positive(self, "n_prompts", "qkv_heads", "max_cross_sections")
        one_of(self, "s2", S2_FORMS)
        require(0 < self.min_effect < 1, "min_effect", f"must be in (0, 1), got {self.min_effect}", "pass e.g. --min-effect 0.1")


@dataclass
class EvalConfig:
    model: str = field(default="toy-ioi", metadata={"help": "toy-ioi, a TransformerLens name (gpt2, ...) or a model dir"})
    n_train: int = field(default=2000, metadata={"help": "train prompts: every F1 is scored on them (cheap: one clean pass each). "
                                                                  "F1 maxima converge slowly: docs/ioi.md, 'How many prompts'"})
    n_fit: int | None = field(default=None, metadata={"help": "prompts the supervised dictionaries are fitted on, their own set whose "
                                                                   "blocks of m names share one frame (rounded up to whole blocks); "
                                                                   "default: as many as --n-train; 0: fit on the train prompts and read "
                                                                   "each of them leave-one-out"})
    n_eval: int = field(default=500, metadata={"help": "eval prompts (approximation, control; each a patched run): "
                                                                "on toy-ioi 3000 put every number measured on them within 0.02 of 8000 (docs/ioi.md)"})
    eval_split: str = field(default="productions", metadata={"help": "grammar split of the eval prompts: productions (frames and connectives "
                                                                     "never seen in training, the default), long (S2 beyond the training range), "
                                                                     "train, any; train prompts always come from the training frames"})
    seed: int = field(default=0, metadata={"help": "seed: train prompts use it, eval seed+1, counterfactuals seed+2, bootstrap seed+3/+4, "
                                                   "fit prompts seed+5"})
    s2: str = field(default="name", metadata={"help": S2_HELP})
    ks: list[int] = field(default_factory=lambda: list(K_VALUES),
                          metadata={"help": "edit sizes: features an SAE edit changes (F1-guided edits remove k/2 and add k/2; the authors' 2 4 8 16)"})
    f1_thresholds: list[float] = field(default_factory=lambda: list(F1_THRESHOLDS),
                                       metadata={"help": "F1 thresholds: a value is covered / a feature interpretable at F1 >= t (the paper's 0.5 0.6 0.8)"})
    active_fraction: float = field(default=0.0, metadata={"help": "0: a feature is active when its code > 0 (the paper's rule); "
                                                                  "> 0 (not the paper's rule): when its code > this x its max over the prompts"})
    attributes: list[str] = field(default_factory=lambda: list(ATTRIBUTES), metadata={"help": "attributes the supervised dictionaries model: IO S Pos (the paper's), optionally plus Template"})
    interpretations: list[str] = field(default_factory=lambda: list(KINDS), metadata={"help": "interpretation kinds searched for each feature"})
    n_boot: int = field(default=200, metadata={"help": "bootstrap resamples of the prompts for the ± of every number (0: none)"})
    n_refit: int | None = field(default=None, metadata={"help": "refits of the supervised dictionaries, each on a resample of the fit "
                                                               "split's blocks, and new choices of the SAEs' interpretable features, "
                                                               "each on a resample of the train prompts: the ± of the numbers that "
                                                               "rest on them then includes that noise (0: both held fixed); default: "
                                                               f"{N_REFIT} with a fit split, 0 with --n-fit 0 (which has none) or --n-boot 0"})
    device: str = field(default="cpu", metadata={"help": "torch device"})

    def __post_init__(self):
        positive(self, "n_train", "n_eval")
        require(self.n_fit is None or self.n_fit >= 0, "n_fit", f"must be >= 0, got {self.n_fit}",
                "pass --n-fit 0 to fit on the train prompts, or leave it out for as many as --n-train")
        one_of(self, "eval_split", EVAL_SPLITS)
        one_of(self, "s2", S2_FORMS)
        require(all(k > 0 for k in self.ks), "ks", f"must be positive, got {self.ks}", "pass e.g. --ks 2 4 8 16")
        require(set(ATTRIBUTES) <= set(self.attributes) <= set(ATTRIBUTES + EXTRA_ATTRIBUTES), "attributes",
                f"must contain IO, S, Pos and nothing but {', '.join(EXTRA_ATTRIBUTES)} besides, got {self.attributes}",
                "pass --attributes IO S Pos [Template]")
        require(bool(self.f1_thresholds) and all(0 < t <= 1 for t in self.f1_thresholds), "f1_thresholds",
                f"must be in (0, 1], got {self.f1_thresholds}", "pass e.g. --f1-thresholds 0.5 0.6 0.8")
        require(0 <= self.active_fraction < 1, "active_fraction", f"must be in [0, 1), got {self.active_fraction}",
                "pass 0 for the paper's rule (code > 0)")
        bad = [k for k in self.interpretations if k not in KINDS]
        require(not bad and {"IO", "S", "Pos"} <= set(self.interpretations), "interpretations",
                f"unknown {bad} or IO / S / Pos missing", f"choose from {', '.join(KINDS)} (IO, S, Pos always)")
        require(self.n_boot >= 0, "n_boot", f"must be >= 0, got {self.n_boot}", "pass --n-boot 200 (or 0 for no ±)")
        if self.n_refit is None:
            self.n_refit = N_REFIT if self.n_fit != 0 and self.n_boot > 0 else 0
        require(self.n_refit >= 0, "n_refit", f"must be >= 0, got {self.n_refit}", "pass e.g. --n-refit 8 (or 0 for none)")
        require(self.n_refit == 0 or self.n_fit != 0, "n_refit", "resamples the fit split, and --n-fit 0 has none "
                "(the dictionaries are fitted on the train prompts, read leave-one-out)", "pass --n-fit > 0, or --n-refit 0")
        self.f1_thresholds = sorted(self.f1_thresholds)
