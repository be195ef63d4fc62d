"""`workbench moe ...`: train one MoE, benchmark gates over seeds, benchmark the OT solver.

    workbench moe train --task movielens --gate comet --experts 16 --k 2 [--local-search] [--seed 0]
    workbench moe bench --task movielens --gates topk,hash,dselect,comet,expert-choice,sparse-ot --seeds 5
    workbench moe solve-bench
    workbench moe train --resume runs/ml-comet              # continue an interrupted run from its last checkpoint
Every flag is a field of a dataclass in routing.config (MoETrainConfig, GateConfig, BenchConfig,
SolverBenchConfig); a bare boolean flag means true. Two flags follow the CLI-wide spelling instead of
their field's name: ``--runs-dir`` sets MoETrainConfig.out and ``--quiet`` clears MoETrainConfig.progress.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import typing
from pathlib import Path

from cli.common import add_quiet, add_runs_dir, check_name, deprecated_progress, examples, subcommand

RESUMABLE = ("train",)  # subcommands with --resume (cli.main's advice after an interruption names only these)

EXAMPLES = {
    "train": examples("workbench moe train --task movielens --gate comet --experts 16 --k 2 --name ml-comet",
                      "workbench moe train --resume runs/ml-comet                # continue an interrupted run",
                      "workbench moe train --task synthetic --gate sparse-ot --experts 8 --k 2 --local-search --seed 1",
                      "workbench moe train --task toy --gate expert-choice --experts 4 --k 1 --steps 300"),
    "bench": examples("workbench moe bench --task movielens --gates topk,hash,dselect,comet,expert-choice,sparse-ot --seeds 5",
                      "workbench moe bench --task synthetic --gates topk,comet,base --seeds 2 --bench-name quick"),
}


def _bare_bools(parser: argparse.ArgumentParser, cls: type) -> None:
    """Let `--flag` alone mean true for the boolean fields of cls."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if hints[f.name] is bool}
    for action in parser._actions:
        if action.dest in names:
            action.nargs, action.const = "?", True


def build_parser() -> argparse.ArgumentParser:
    from routing.config import BenchConfig, GateConfig, MoETrainConfig, SolverBenchConfig
    from workbench.config import add_arguments

    parser = argparse.ArgumentParser(prog="workbench moe", description="Mixture-of-experts gates as sparse allocation.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_, extra in (("train", "train one MoE model and write a run dir", None),
                               ("bench", "train every gate over several seeds and compare", BenchConfig)):
        p = subcommand(sub, name, "workbench moe", help_, epilog=EXAMPLES[name])
        for cls in (MoETrainConfig, GateConfig) + ((extra,) if extra else ()):
            add_arguments(p, cls, skip=("out", "progress"))
            _bare_bools(p, cls)
        add_runs_dir(p, old=("--out",))
        add_quiet(p, old_no_progress=False)
        deprecated_progress(p)
        if name == "train":
            p.add_argument("--resume", metavar="RUN", default=None,
                           help="continue this run directory from its last checkpoint (other flags must match the run's)")
    p = sub.add_parser("solve-bench", help="sparse-OT solver vs POT, batched, and gate timings", prog="workbench moe solve-bench")
    add_arguments(p, SolverBenchConfig)
    _bare_bools(p, SolverBenchConfig)
    return parser


def _print_result(cfg, res: dict) -> None:
    key = "test_auc_mean" if "test_auc_mean" in res else "test_loss"
    print(f"{cfg.task} {res['gate']} seed {cfg.seed}: {key} = {res[key]:.4f}"
          + (f", nmi = {res['nmi']:.3f}" if "nmi" in res else "") + f" ({res['train_time_s']:.1f}s)")


def _given_flags(argv: list[str]) -> set[str]:
    """The destinations of the flags spelled out on the command line (not their defaults)."""
    parser = build_parser()._subparsers._group_actions[0].choices["train"]
    out = set()
    for tok in argv:
        opt = tok.split("=", 1)[0]
        if opt.startswith("--") and opt in parser._option_string_actions:
            out.add(parser._option_string_actions[opt].dest)
    return out


def _resume(args, argv: list[str]) -> int:
    """`moe train --resume RUN`: the run's stored config; a flag given alongside must agree with it."""
    from routing.config import GateConfig, MoETrainConfig
    from routing.train import open_resume, train
    from workbench.config import from_args
    from workbench.errors import ConfigError

    run, cfg = open_resume(args.resume)
    given = _given_flags(argv) - {"resume", "quiet", "runs_dir"}
    new = from_args(MoETrainConfig, args, routing=from_args(GateConfig, args))
    for name in sorted(given):
        for section_new, section_old in ((new, cfg), (new.routing, cfg.routing)):
            if hasattr(section_old, name) and getattr(section_new, name) != getattr(section_old, name):
                raise ConfigError(f"{name}: --resume {args.resume} was started with {name}={getattr(section_old, name)!r}, "
                                  f"not {getattr(section_new, name)!r}; drop --{name.replace('_', '-')} to continue that run")
    cfg = dataclasses.replace(cfg, progress=not args.quiet)
    _print_result(cfg, train(cfg, run, resume=True))
    return 0


def main(argv: list[str]) -> int:
    from routing.config import GateConfig, MoETrainConfig
    from workbench.config import from_args

    args = build_parser().parse_args(argv)
    if args.command == "solve-bench":
        from routing.benchmarks import run_solver_bench
        from routing.config import SolverBenchConfig

        run_solver_bench(from_args(SolverBenchConfig, args))
        return 0
    if args.command == "train" and args.resume:
        return _resume(args, argv)
    cfg = from_args(MoETrainConfig, args, routing=from_args(GateConfig, args), out=args.runs_dir, progress=not args.quiet)
    check_name(cfg.name or None, cfg.out if args.command == "train" else None)
    from workbench.devices import check_device

    check_device(cfg.device)  # --device cuda on a machine without a GPU: one line, before any data loads
    if args.command == "train":
        from routing.train import train

        res = train(cfg)
        _print_result(cfg, res)
        return 0
    from routing.bench import run_bench
    from routing.config import BenchConfig

    bench = from_args(BenchConfig, args)
    check_name(bench.bench_name or None)
    if bench.bench_name and any((Path(cfg.out) / bench.bench_name).glob("*/config.json")):
        from workbench.errors import RunError

        raise RunError(f"{Path(cfg.out) / bench.bench_name} already holds bench runs; choose another --bench-name")
    run_bench(bench, cfg, command="workbench moe " + shlex.join(argv))
    return 0
