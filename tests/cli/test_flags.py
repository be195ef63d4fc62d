"""One flag per concept in every group: --runs-dir, --name, --quiet; old spellings are hidden aliases with a note."""

from __future__ import annotations

import argparse

import pytest

from tests.cli.helpers import all_parsers

OLD = ("--root", "--runs", "--no-progress", "--progress")


def _visible_options(p: argparse.ArgumentParser) -> set[str]:
    return {o for a in p._actions if a.help != argparse.SUPPRESS for o in a.option_strings}


def _hidden_options(p: argparse.ArgumentParser) -> set[str]:
    return {o for a in p._actions if a.help == argparse.SUPPRESS for o in a.option_strings}


RUN_MAKERS = [("model", "train"), ("acts", "cache"), ("sae", "train"), ("ioi", "locate"), ("ioi", "eval"), ("moe", "train"),
              ("moe", "bench"), ("runs",), ("app",)]
PROGRESS = [("model", "train"), ("acts", "cache"), ("sae", "train"), ("sae", "analyze"), ("ioi", "locate"), ("ioi", "eval"),
            ("moe", "train"), ("moe", "bench")]


def test_one_spelling_per_concept_in_every_help():
    parsers = all_parsers()
    for key, p in parsers.items():
        shown = _visible_options(p)
        assert not shown & set(OLD), f"{' '.join(key)} shows {shown & set(OLD)}"
        if key[0] == "moe":
            assert "--out" not in shown, key  # the MoE runs root is --runs-dir too
    for key in RUN_MAKERS:
        assert "--runs-dir" in _visible_options(parsers[key]), key
    for key in PROGRESS:
        assert "--quiet" in _visible_options(parsers[key]), key
    for key in RUN_MAKERS[:-2]:
        assert "--name" in _visible_options(parsers[key]) or "--bench-name" in _visible_options(parsers[key]), key


@pytest.mark.parametrize("key,old,new,dest,value", [
    (("ioi", "locate"), ["--root", "R"], "--runs-dir", "runs_dir", "R"),
    (("model", "train"), ["--root", "R"], "--runs-dir", "runs_dir", "R"),
    (("acts", "cache"), ["--root", "R"], "--runs-dir", "runs_dir", "R"),
    (("runs",), ["--root", "R"], "--runs-dir", "runs_dir", "R"),
    (("app",), ["--runs", "R"], "--runs-dir", "runs_dir", "R"),
    (("moe", "train"), ["--out", "R"], "--runs-dir", "runs_dir", "R"),
    (("moe", "train"), ["--progress", "false"], "--quiet", "quiet", True),
    (("moe", "train"), ["--progress"], "--quiet", "quiet", False),
    (("sae", "train"), ["--no-progress"], "--quiet", "quiet", True),
    (("sae", "analyze"), ["RUN", "--no-progress"], "--quiet", "quiet", True),
])
def test_old_spellings_still_work_with_a_note(key, old, new, dest, value, capsys):
    p = all_parsers()[key]
    assert old[-1] in _hidden_options(p) or old[0] in _hidden_options(p)
    args = p.parse_args(old)
    assert getattr(args, dest) == value
    err = capsys.readouterr().err
    assert "is deprecated" in err and new in err


def test_new_spellings_parse_quietly(capsys):
    parsers = all_parsers()
    assert parsers[("moe", "train")].parse_args(["--runs-dir", "R", "--quiet"]).runs_dir == "R"
    assert parsers[("sae", "train")].parse_args(["--runs-dir", "R", "--quiet"]).runs_dir == "R"
    assert parsers[("ioi", "eval")].parse_args(["--quiet"]).quiet is True
    assert capsys.readouterr().err == ""
