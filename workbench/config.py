"""Config dataclasses: validation helpers, JSON round-trip, a one-to-one argparse mapping, and the core's configs.

A config is a plain ``@dataclass`` whose fields carry ``metadata={"help": ...}``; the CLI flag
``--some-field`` maps onto field ``some_field``. Validation lives in ``__post_init__`` and raises
:class:`ConfigError` with a sentence naming the field and the fix. Config modules import no torch,
so the CLI builds every parser (and ``--help``) without loading it; this one holds the core's configs:
:class:`ActsConfig` (activation source, used by ``workbench.acts``) and :class:`ModelTrainConfig` (the
toy model's recipe, used by ``workbench.toy_train``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from workbench import toyworld as _toy  # the training mix's defaults (pure Python, no torch)
from workbench.errors import ConfigError

T = TypeVar("T")


def require(cond: bool, field: str, problem: str, fix: str) -> None:
    """Raise ConfigError('<field>: <problem>; <fix>') unless cond holds."""
    if not cond:
        raise ConfigError(f"{field}: {problem}; {fix}")


def positive(obj: Any, *names: str) -> None:
    """Require each named numeric field of obj to be > 0."""
    for n in names:
        v = getattr(obj, n)
        require(v is not None and v > 0, n, f"must be positive, got {v!r}", f"pass --{flag(n)} with a value > 0")


def one_of(obj: Any, name: str, choices: typing.Iterable[Any]) -> None:
    """Require field `name` to be one of `choices`."""
    choices = list(choices)
    v = getattr(obj, name)
    require(v in choices, name, f"unknown value {v!r}", f"choose one of {', '.join(map(str, choices))}")


def flag(name: str) -> str:
    return name.replace("_", "-")


def field_help(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: dict, *, strict: bool = True) -> T:
    """Build cls from a dict; unknown keys are an error when strict (typo protection)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown and strict:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}; known fields are {sorted(names)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in data.items():
        if k not in names:
            continue
        if isinstance(v, dict) and dataclasses.is_dataclass(hints.get(k)):
            v = from_dict(hints[k], v, strict=strict)
        kwargs[k] = v
    return cls(**kwargs)


def save_json(cfg: Any, path: str | Path) -> None:
    from workbench.runs import atomic_write_text

    atomic_write_text(path, json.dumps(to_dict(cfg), indent=2))


def load_json(cls: type[T], path: str | Path) -> T:
    return from_dict(cls, json.loads(Path(path).read_text()))


def parse_bool(s: str) -> bool:
    """A CLI boolean: 1/true/yes/on or 0/false/no/off."""
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def _parse_int(s: str) -> int:
    return int(s.replace("_", ""))


def _arg_type(tp: Any):
    origin = typing.get_origin(tp)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _arg_type(args[0]) if len(args) == 1 else str
    if tp is bool:
        return parse_bool
    if tp is int:
        return _parse_int
    if tp in (float, str):
        return tp
    return str


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--flag`` per dataclass field (defaults shown in --help)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or dataclasses.is_dataclass(hints[f.name]):
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        tp = hints[f.name]
        kw: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS,
                                  help=f"{field_help(f)} (default: {default})")
        if typing.get_origin(tp) in (list, tuple):
            kw.update(nargs="+", type=_arg_type(typing.get_args(tp)[0]))
        else:
            kw["type"] = _arg_type(tp)
        parser.add_argument(f"--{flag(f.name)}", **kw)


def from_args(cls: type[T], args: argparse.Namespace, base: T | None = None, **extra: Any) -> T:
    """Build cls from parsed args: fields the user passed override `base` (or the defaults)."""
    names = {f.name for f in dataclasses.fields(cls)}
    data = to_dict(base) if base is not None else {}
    data.update({k: v for k, v in vars(args).items() if k in names})
    data.update(extra)
    return from_dict(cls, data)


# ---- the core's configs ------------------------------------------------------------------------
CORPORA = ("toy", "ioi")
HOOK_SYNTAX = re.compile(r"([A-Za-z0-9_]+\.)*hook_[A-Za-z0-9_]+")  # blocks.1.hook_resid_post, blocks.0.attn.hook_z, hook_embed


@dataclass
class ActsConfig:
    model: str = field(default="toy-ioi", metadata={"help": "toy-ioi, a TransformerLens name (gpt2, ...) or a model dir"})
    hook: str = field(default="blocks.1.hook_resid_post", metadata={"help": "TransformerLens hook name"})
    head: int | None = field(default=None, metadata={"help": "head index for per-head hooks (attn.hook_q/k/v/z); default: all heads concatenated"})
    corpus: str = field(default="toy", metadata={"help": "toy (general text + IOI), ioi (IOI prompts), or a datasets name / local text file"})
    text_column: str = field(default="text", metadata={"help": "text column of a datasets corpus"})
    positions: str = field(default="all", metadata={"help": "all (every real token but BOS), end (last token), or comma-separated indices"})
    batch_size: int = field(default=4096, metadata={"help": "activations per yielded batch"})
    seq_batch: int = field(default=128, metadata={"help": "sequences per model forward pass"})
    shuffle_buffer: int = field(default=16384, metadata={"help": "activations held for shuffling (0: no shuffle)"})
    seed: int = field(default=0, metadata={"help": "seed for corpus sampling and shuffling"})
    device: str = field(default="cpu", metadata={"help": "torch device"})

    def __post_init__(self):
        positive(self, "batch_size", "seq_batch")
        require(HOOK_SYNTAX.fullmatch(self.hook) is not None, "hook", f"{self.hook!r} is not a TransformerLens hook name",
                "use a name like blocks.1.hook_resid_post, blocks.0.attn.hook_z or hook_embed")
        require(self.shuffle_buffer >= 0, "shuffle_buffer", f"must be >= 0, got {self.shuffle_buffer}", "pass 0 to disable shuffling")
        require(self.positions in ("all", "end") or re.fullmatch(r"-?\d+(,-?\d+)*", self.positions) is not None,
                "positions", f"cannot parse {self.positions!r}", "use all, end, or indices like 3,5,-1")
        require(self.head is None or self.head >= 0, "head", f"must be >= 0, got {self.head}", "pass a head index")
        if self.positions not in ("all", "end"):
            require(any(int(p) != 0 for p in self.positions.split(",")), "positions",
                    "position 0 is BOS, which is never kept, so nothing would be selected",
                    "use all, end, or indices >= 1 (or negative, counted from the end)")


@dataclass
class ModelTrainConfig:
    steps: int = field(default=3500, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=128, metadata={"help": "sequences per step"})
    lr: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=200, metadata={"help": "linear warm-up steps, then cosine decay"})
    min_lr_frac: float = field(default=0.1, metadata={"help": "final lr as a fraction of --lr"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient norm clip"})
    ioi_fraction: float = field(default=_toy.IOI_FRACTION, metadata={"help": "fraction of sequences that are IOI prompts"})
    ordinal_fraction: float = field(default=_toy.ORDINAL_FRACTION, metadata={"help": "fraction of IOI prompts whose S2 is 'the former' / 'the latter' instead of the name"})
    pronoun_fraction: float = field(default=_toy.PRONOUN_FRACTION, metadata={"help": "fraction of IOI prompts whose S2 is 'he' / 'she' (IO and S of different genders)"})
    n_layers: int = field(default=4, metadata={"help": "transformer layers"})
    d_model: int = field(default=128, metadata={"help": "residual width"})
    n_heads: int = field(default=4, metadata={"help": "attention heads per layer"})
    n_ctx: int = field(default=64, metadata={"help": "context length"})
    micro_batch: int = field(default=32, metadata={"help": "sequences per forward pass: a step's sequences are sorted by length and run in micro-batches, so little is padding"})
    seed: int = field(default=0, metadata={"help": "seed for init and data"})
    eval_every: int = field(default=250, metadata={"help": "steps between IOI evaluations and checkpoints"})
    eval_prompts: int = field(default=300, metadata={"help": "prompts per IOI evaluation split"})
    device: str = field(default="cpu", metadata={"help": "torch device (cpu, cuda, ...)"})
    out: str | None = field(default=None, metadata={"help": "also save the final model to this directory"})
    wandb_project: str | None = field(default=None, metadata={"help": "wandb project (offline unless configured)"})
    wandb_tags: tuple[str, ...] = field(default=(), metadata={"help": "wandb tags of the run"})
    wandb_group: str | None = field(default=None, metadata={"help": "wandb group, e.g. one per sweep"})

    def __post_init__(self):
        self.wandb_tags = tuple(self.wandb_tags or ())
        positive(self, "steps", "batch_size", "micro_batch", "lr", "n_layers", "d_model", "n_heads", "n_ctx", "eval_every", "eval_prompts")
        require(0 <= self.ordinal_fraction <= 1, "ordinal_fraction", f"must be in [0, 1], got {self.ordinal_fraction}", "pass e.g. --ordinal-fraction 0.25")
        require(0 <= self.pronoun_fraction <= 1 - self.ordinal_fraction, "pronoun_fraction",
                f"must be in [0, 1 - ordinal_fraction], got {self.pronoun_fraction}", "pass e.g. --pronoun-fraction 0.1")
        require(0 <= self.ioi_fraction <= 1, "ioi_fraction", f"must be in [0, 1], got {self.ioi_fraction}", "pass e.g. --ioi-fraction 0.7")
        require(self.d_model % self.n_heads == 0, "d_model", f"{self.d_model} is not divisible by n_heads={self.n_heads}", "choose d_model a multiple of n_heads")
        require(0 <= self.warmup_steps < self.steps, "warmup_steps", f"must be in [0, steps), got {self.warmup_steps}", "lower --warmup-steps")
