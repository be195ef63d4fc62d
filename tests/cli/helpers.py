"""Helpers for the front-door tests: every group's parser and its subcommands."""

from __future__ import annotations

import argparse
import importlib


def groups() -> dict[str, str]:
    from cli.main import COMMANDS

    return {name: module for name, (module, _) in COMMANDS.items()}


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def all_parsers() -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """(group,) and (group, sub) -> parser, for every command the front door knows."""
    out = {}
    for name, module in groups().items():
        p = importlib.import_module(module).build_parser()
        out[(name,)] = p
        for sub, sp in subparsers(p).items():
            out[(name, sub)] = sp
    return out
