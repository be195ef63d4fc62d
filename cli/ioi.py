"""`workbench ioi locate|eval`: find the IOI circuit, then evaluate dictionaries on it.

    workbench ioi locate --model toy-ioi
    workbench ioi eval --model toy-ioi --sae runs/a --sae runs/b [--cross-section name-movers-z]

Both write a run dir of kind ``ioi`` (files: :mod:`evals.report`). The configs come from the torch-free
:mod:`evals.config`, so ``workbench ioi --help`` is fast; every argument (locations file, ``--location``
syntax, ``--sae`` dirs, run name) is checked before the model loads.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cli.common import add_quiet, add_runs_dir, check_name, examples, say, subcommand
from workbench.config import add_arguments, from_args, to_dict


def build_parser() -> argparse.ArgumentParser:
    from evals.config import EvalConfig, LocateConfig

    p = argparse.ArgumentParser(prog="workbench ioi", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    loc = subcommand(sub, "locate", "workbench ioi", "find heads/positions that matter for IOI and name cross-sections",
                     description="Direct logit attribution, attention from END, mean ablation and activation "
                                 "patching (ABC counterfactual) per head and position; writes locations.json.",
                     epilog=examples("workbench ioi locate --name ioi-locate",
                                     "workbench ioi locate --model gpt2 --n-prompts 200 --device cuda --name gpt2-locate"))
    add_arguments(loc, LocateConfig)
    _run_args(loc)
    ev = subcommand(sub, "eval", "workbench ioi", "evaluate supervised dictionaries and SAEs on the cross-sections",
                    description="Approximation (sufficiency, necessity, LD recovered), control (edit accuracy) and "
                                "interpretability (F1 of features vs attribute values) per cross-section.",
                    epilog=examples("workbench ioi eval --locations runs/ioi-locate --sae runs/topk-k8 --sae runs/fc-zipf-k8",
                                    "workbench ioi eval --location blocks.1.hook_resid_post@END --sae runs/topk-k8 --n-eval 300",
                                    "workbench ioi eval --locations runs/ioi-locate --cross-section name-movers-z "
                                    "--sae z=runs/z-h0,runs/z-h1"))
    add_arguments(ev, EvalConfig)
    ev.add_argument("--locations", metavar="PATH", help="locations.json or a `workbench ioi locate` run dir "
                    "(default: run discovery now)")
    ev.add_argument("--cross-section", action="append", default=[], metavar="NAME",
                    help="evaluate only this cross-section (repeatable; default: all)")
    ev.add_argument("--location", action="append", default=[], metavar="HOOK[HEAD]@POS",
                    help="add a cross-section 'custom' made of these locations (repeatable), e.g. blocks.1.attn.hook_q[2]@END")
    ev.add_argument("--sae", action="append", default=[], metavar="PATH|LABEL=P1,P2",
                    help="an SAE run dir, or several (one per location) under one label (repeatable)")
    _run_args(ev)
    return p


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="run name (default: ioi-<time>)")
    add_runs_dir(p)
    add_quiet(p, old_no_progress=False)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return _locate(args) if args.cmd == "locate" else _eval(args)


def _locate(args) -> int:
    from evals.config import LocateConfig

    cfg = from_args(LocateConfig, args)
    check_name(args.name, args.runs_dir)
    from evals.locate import format_locate, locate
    from evals.report import write_locate
    from workbench.models import load_model
    from workbench.runs import Run

    model = load_model(cfg.model, cfg.device)
    run = Run.create("ioi", {"command": "locate", **to_dict(cfg)}, name=args.name, root=args.runs_dir)
    say(args.quiet)(f"run dir: {run.path}")
    run.set_status("running")
    try:
        res = locate(model, cfg, progress=say(args.quiet))
        write_locate(run, res)
    except BaseException as e:
        run.set_status("failed", error=str(e))
        raise
    run.set_status("done")
    print(format_locate(res))
    print(f"wrote {run.path / 'locations.json'}")
    return 0


def load_cross_sections(path: str) -> tuple[dict, list]:
    """(locations.json content, its cross-sections) from a file or a locate run dir."""
    from evals.locations import CrossSection
    from workbench.errors import RunError

    p = Path(path)
    if p.is_dir():
        p = p / "locations.json"
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise RunError(f"{p} does not exist; run `workbench ioi locate` first or pass its run dir") from None
    except json.JSONDecodeError as e:
        raise RunError(f"{p} is corrupt ({e}); re-run `workbench ioi locate`") from e
    return data, [CrossSection.from_dict(c) for c in data.get("cross_sections", [])]


def find_locations(path: str, names: list[str]) -> list:
    """The locations of a locate run (dir or locations.json) named as it writes them, in the order given."""
    from workbench.errors import ConfigError

    _, sections = load_cross_sections(path)
    known = {str(loc): loc for cs in sections for loc in cs.locations}
    missing = [name for name in names if name not in known]
    if missing:
        raise ConfigError(f"{', '.join(missing)} not in {path}; it has {', '.join(sorted(known))}")
    return [known[name] for name in names]


def select_sections(sections: list, names: list[str], custom: list[str]) -> list:
    from evals.locations import CrossSection, Location
    from workbench.errors import ConfigError

    if names:
        known = {c.name: c for c in sections}
        bad = [n for n in names if n not in known]
        if bad:
            raise ConfigError(f"cross_section: unknown {bad}; known cross-sections are {sorted(known) or 'none'}")
        sections = [known[n] for n in names]
    if custom:
        sections = sections + [CrossSection("custom", [Location.parse(s) for s in custom], "locations given with --location")]
    return sections


def _eval(args) -> int:
    from evals.config import EvalConfig, LocateConfig
    from workbench.errors import ConfigError

    cfg = from_args(EvalConfig, args)
    check_name(args.name, args.runs_dir)
    say_ = say(args.quiet)
    # everything a typo can break is checked before the model loads and before the run dir exists
    found = None
    if args.locations:
        found, sections = load_cross_sections(args.locations)
        located = found.get("config", {}).get("s2", "name")
        if located != cfg.s2:  # positions (S2) and circuits differ between the two prompt forms
            raise ConfigError(f"s2: the cross-sections were located on {located!r} prompts but --s2 is {cfg.s2!r}; "
                              f"pass --s2 {located} (or locate again with --s2 {cfg.s2})")
    else:
        sections = []
    sections = select_sections(sections, args.cross_section, args.location) if (args.locations or args.location) else None
    from evals.dictionary import load_families
    from evals.harness import evaluate
    from evals.locate import locate
    from evals.locations import check_locations
    from evals.report import write_eval, write_locate
    from workbench.models import load_model
    from workbench.runs import Run

    families = load_families(args.sae, cfg.device)
    model = load_model(cfg.model, cfg.device)
    if sections is not None:
        check_locations(model, [loc for cs in sections for loc in cs.locations])
    run = Run.create("ioi", {"command": "eval", **to_dict(cfg), "locations": args.locations, "cross_section": args.cross_section,
                             "location": args.location, "sae": args.sae}, name=args.name, root=args.runs_dir)
    say_(f"run dir: {run.path}")
    run.set_status("running")
    try:
        if sections is None:
            say_("no --locations: running discovery first (workbench ioi locate)")
            found = locate(model, LocateConfig(model=cfg.model, seed=cfg.seed, device=cfg.device), progress=say_)
            sections = select_sections(_sections_of(found), args.cross_section, args.location)
        if found is not None:
            write_locate(run, found)
        if not sections:
            raise ConfigError("no cross-sections to evaluate: discovery found none; pass --location HOOK[HEAD]@POS")
        res = evaluate(model, cfg, sections, families, progress=say_)
        write_eval(run, res, cfg.model)
    except BaseException as e:
        run.set_status("failed", error=str(e))
        raise
    run.set_status("done", total_s=res.timings.get("total_s"))
    print((run.path / "summary.md").read_text())
    print(f"results in {run.path}")
    return 0


def _sections_of(found: dict) -> list:
    from evals.locations import CrossSection

    return [CrossSection.from_dict(c) for c in found.get("cross_sections", [])]
