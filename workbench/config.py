"""Config dataclasses: validation helpers, JSON round-trip and a one-to-one argparse mapping.

A config is a plain ``@dataclass`` whose fields carry ``metadata={"help": ...}``; the CLI flag
``--some-field`` maps onto field ``some_field``. Validation lives in ``__post_init__`` and raises
:class:`ConfigError` with a sentence naming the field and the fix.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

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


def _parse_bool(s: str) -> bool:
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
        return _parse_bool
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
