"""The examples in --help epilogs are real commands: each parses, and its configs validate."""

from __future__ import annotations

import shlex

import pytest

from tests.cli.helpers import all_parsers


def _examples() -> list[tuple[str, list[str]]]:
    out = []
    for key, p in all_parsers().items():
        text = (p.epilog or "").replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("torchrun ") and " -m workbench " in line:  # torchrun ... -m workbench CMD ...
                line = "workbench " + line.split(" -m workbench ", 1)[1]
            if line.startswith("workbench "):
                out.append((" ".join(key), shlex.split(line)[1:]))
    return out


def test_the_main_commands_have_examples():
    where = {k for k, _ in _examples()}
    assert {"sae train", "sae eval", "sae analyze", "acts cache", "model train", "ioi locate", "ioi eval", "moe train",
            "moe bench"} <= where
    assert sum(k == "sae train" for k, _ in _examples()) >= 4


@pytest.mark.parametrize("shown_in,argv", _examples(), ids=lambda x: " ".join(x) if isinstance(x, list) else x)
def test_example_parses_and_validates(shown_in, argv, capsys):
    from workbench.config import from_args

    parsers = all_parsers()
    key = tuple(argv[:2]) if tuple(argv[:2]) in parsers else tuple(argv[:1])
    args = parsers[key].parse_args(argv[len(key):])
    assert "deprecated" not in capsys.readouterr().err  # examples use today's spellings
    if key == ("sae", "train") and not args.resume:
        from cli.sae import _configs_from_args

        _configs_from_args(args)
    elif key in (("moe", "train"), ("moe", "bench")):
        from routing.config import GateConfig, MoETrainConfig

        from_args(MoETrainConfig, args, routing=from_args(GateConfig, args), out=args.runs_dir, progress=not args.quiet)
    elif key == ("acts", "cache"):
        from workbench.config import ActsConfig

        from_args(ActsConfig, args)
    elif key == ("model", "train"):
        from workbench.config import ModelTrainConfig

        from_args(ModelTrainConfig, args)
    elif key in (("ioi", "eval"), ("ioi", "locate")):
        from evals.config import EvalConfig, LocateConfig

        from_args(EvalConfig if key[1] == "eval" else LocateConfig, args)
