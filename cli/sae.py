"""`workbench sae train | eval | analyze`: thin argparse front ends over sae.trainer, sae.metrics and sae.analyze.

Every training flag maps to one config field (``--k`` -> SAEConfig.k, ``--hook`` -> ActsConfig.hook,
``--tokens`` -> TrainConfig.tokens); ``--resume RUN`` continues a run from its last checkpoint with the
config stored in the run (flags given next to it must agree with that config).
"""

from __future__ import annotations

import argparse
import json

from cli.common import add_quiet, check_name, dead_fraction, examples, parse_int, subcommand

RESUMABLE = ("train",)  # subcommands with --resume (cli.main names them after an interruption)

TRAIN_EXAMPLES = examples(
    "workbench sae train --arch topk --k 8 --expansion 8 --tokens 2_000_000 --name topk-k8",
    "workbench acts cache --hook blocks.1.hook_resid_post --tokens 2_000_000 --name acts-l1",
    "workbench sae train --cache runs/acts-l1/cache --arch feature-choice --capacity zipf --k 8 --name fc-zipf-k8",
    "workbench sae train --model gpt2 --hook blocks.6.hook_resid_post --corpus my.txt --arch mutual-choice \\\n"
    "      --k 32 --expansion 16 --device cuda --wandb-project saes --name gpt2-l6-mc",
    "workbench sae train --arch routed --gate topk --experts 8 --k 8 --name switch-e8   # Switch SAE (top-1 router)",
    "workbench sae train --arch routed --gate expert-choice --experts 8 --k 8 --name routed-ec",
    "workbench sae train --resume runs/topk-k8                 # continue an interrupted run",
    "workbench sae train --hook blocks.1.hook_resid_post --hook blocks.2.hook_resid_post --name l12  # one forward, two SAEs",
    "torchrun --nproc-per-node 2 -m workbench sae train --cache runs/acts-l1/cache --name topk-ddp   # data parallel (DDP)",
    "torchrun --nproc-per-node 2 -m workbench sae train --hook blocks.0.hook_resid_post --hook blocks.1.hook_resid_post \\\n"
    "      --distribute hooks --name groups                    # one process per group of hooks",
)


def build_parser() -> argparse.ArgumentParser:
    from workbench.config import ActsConfig, add_arguments

    from sae.config import SAEConfig, TrainConfig

    p = argparse.ArgumentParser(prog="workbench sae", description="Train and evaluate sparse autoencoders (TopK, Feature Choice, Mutual Choice, ReLU+L1, routed by any gate).")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = subcommand(sub, "train", "workbench sae", "train an SAE on activations at a hook",
                   description="Train an SAE on activations streamed from the model at --hook, or read from a "
                               "--cache made by `workbench acts cache`; writes a run dir with the SAE "
                               "(cfg.json + sae_weights.safetensors, SAELens' layout) and eval.json.", epilog=TRAIN_EXAMPLES)
    acts = t.add_argument_group("activations")
    acts.add_argument("--hook", dest="hooks", action="append", default=None, metavar="HOOK",
                      help="TransformerLens hook name; repeat it (--hook A --hook B) to train one SAE per hook from one "
                           "model forward pass, each in its own run dir NAME-HOOK (default: blocks.1.hook_resid_post)")
    add_arguments(acts, ActsConfig, skip=("hook",))
    add_arguments(t.add_argument_group("autoencoder"), SAEConfig)
    add_arguments(t.add_argument_group("training"), TrainConfig)  # incl. --name and --runs-dir
    t.add_argument("--resume", metavar="RUN", action="append", default=None,
                   help="continue this run directory from its last checkpoint (repeat it for runs trained together)")
    add_quiet(t)
    e = subcommand(sub, "eval", "workbench sae", "evaluate a trained SAE run on held-out tokens",
                   epilog=examples("workbench sae eval runs/topk-k8", "workbench sae eval runs/fc-zipf-k8 --modes threshold --no-ce --json"))
    e.add_argument("run", help="run directory written by `workbench sae train`")
    e.add_argument("--tokens", type=parse_int, default=None, help="held-out tokens (default: the run's eval_tokens)")
    e.add_argument("--modes", nargs="+", choices=("batch", "threshold"), default=None, help="allocation modes (default: all the SAE supports)")
    e.add_argument("--device", default=None, help="torch device (default: the run's)")
    e.add_argument("--no-ce", action="store_true", help="skip the CE-loss-recovered forward passes")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_analyze(sub)
    return p


def _add_analyze(sub) -> None:
    """`workbench sae analyze RUN`: the app's feature-browser data."""
    from workbench.config import add_arguments

    from sae.config import AnalyzeConfig

    a = subcommand(sub, "analyze", "workbench sae", "precompute the app's feature browser data (top contexts, histograms, output tokens)",
                   description="Run the SAE over held-out text once and store what the app's feature browser shows "
                               "(top-activating contexts, activation histograms, output tokens, per-token L0) in the run dir.",
                   epilog=examples("workbench sae analyze runs/topk-k8"))
    a.add_argument("run", help="run directory written by `workbench sae train`")
    add_arguments(a, AnalyzeConfig)
    add_quiet(a)


def _analyze(args) -> int:
    from workbench.config import from_args

    from sae.analyze import FILES, analyze
    from sae.config import AnalyzeConfig

    s = analyze(args.run, from_args(AnalyzeConfig, args), progress=not args.quiet)
    print(f"{args.run}: {s['n_tokens']} tokens, {s['d_sae'] - s['dead']}/{s['d_sae']} latents active, "
          f"L0 {s['l0_mean']:.2f} ± {s['l0_std']:.2f} ({s['mode']} mode); wrote {', '.join(FILES)} in {s['time_s']:.1f}s")
    return 0


def _configs_from_args(args) -> list:
    """One TrainConfig per --hook; with several hooks each run is named NAME-HOOK."""
    import time

    from workbench.config import ActsConfig, from_args

    from sae.config import SAEConfig, TrainConfig

    hooks = args.hooks or [ActsConfig.hook]
    base = args.name if getattr(args, "name", None) else f"sae-{time.strftime('%Y%m%d-%H%M%S')}"
    out = []
    for h in hooks:
        name = f"{base}-{h}" if len(hooks) > 1 else getattr(args, "name", None)
        out.append(from_args(TrainConfig, args, acts=from_args(ActsConfig, args, hook=h), sae=from_args(SAEConfig, args),
                             name=name))
    return out


def _resume_config(args, path: str):
    """The run's stored config; any flag passed alongside --resume must agree with it."""
    import dataclasses

    from workbench.config import ActsConfig
    from workbench.errors import ConfigError
    from workbench.runs import Run

    from sae.config import SAEConfig, TrainConfig, load_train_config

    cfg = load_train_config(Run.open(path).config)
    given = {k: v for k, v in vars(args).items() if k not in ("cmd", "resume", "quiet", "hooks")}
    for section, cls in ((cfg.acts, ActsConfig), (cfg.sae, SAEConfig), (cfg, TrainConfig)):
        for f in dataclasses.fields(cls):
            if f.name in given and not dataclasses.is_dataclass(getattr(section, f.name)):
                stored = getattr(section, f.name)
                if f.name in ("d_in", "d_sae") and cfg.sae.d_sae is not None and given[f.name] is None:
                    continue
                if (list(given[f.name]) if isinstance(given[f.name], (list, tuple)) else given[f.name]) != (
                        list(stored) if isinstance(stored, (list, tuple)) else stored):
                    raise ConfigError(f"{f.name}: --resume {path} was started with {f.name}={stored!r}, "
                                      f"not {given[f.name]!r}; drop --{f.name.replace('_', '-')} to continue that run")
    return cfg


def _train(args) -> int:
    import os

    from sae.trainer import train_many

    if args.resume:
        if args.hooks:
            from workbench.errors import ConfigError

            raise ConfigError("hook: --resume continues the runs with their stored hooks; drop --hook")
        cfgs = [_resume_config(args, p) for p in args.resume]
    else:
        cfgs = _configs_from_args(args)
    for cfg in cfgs:
        check_name(cfg.name, None if args.resume else cfg.runs_dir)
    runs = train_many(cfgs, resume=args.resume, progress=not args.quiet)
    if cfgs[0].distribute == "data" and os.environ.get("RANK", "0") != "0":
        return 0  # rank 0 reports
    for run in runs:
        print(f"run {run.path}: {format_eval(run.read_json('eval.json'))}")
    return 0


def format_eval(s: dict) -> str:
    """The saved SAE's inference-mode numbers first (FVU next to CE recovered), then each other mode, labelled."""
    head = (f"{s['arch']} k={s['k']} d_sae={s['d_sae']} normalize={s.get('normalize', '?')} aux={s['aux']} "
            f"on {s['model']} {s['hook']} ({s['eval_tokens']} held-out tokens)")
    lines = [head]
    first = s.get("mode") or next(iter(s["modes"]))
    for mode in (first, *[m for m in s["modes"] if m != first]):
        r = s["modes"][mode]
        label = f"saved SAE ({mode} mode)" if mode == first else f"{mode} mode ({MODE_NOTE.get(mode, '')})"
        ce = f"{r['ce_recovered']:.4f}" if r.get("ce_recovered") is not None else "-"
        window = f" of {r['dead_window']:,} held-out tokens" if r.get("dead_window") else ""
        lines.append(f"  {label}: FVU {r['fvu']:.4f}  CE recovered {ce}  L0 {r['l0_mean']:.2f} ± {r['l0_std']:.2f} "
                     f"(p05 {r['l0_p05']:.0f}, p50 {r['l0_p50']:.0f}, p95 {r['l0_p95']:.0f}, max {r['l0_max']})  "
                     f"dead {100 * dead_fraction(r):.1f}% (silent on all{window})")
    return "\n".join(lines)


MODE_NOTE = {"batch": "the training rule: each token's latents depend on the rest of its batch",
             "threshold": "pre > threshold, batch-independent"}


def _eval(args) -> int:
    import torch

    from workbench.models import load_model
    from workbench.runs import Run

    from sae import io
    from sae.config import load_train_config
    from sae.metrics import evaluate
    from sae.trainer import KIND, check_finite_eval, eval_summary, evaluate_saved, load_latest_checkpoint, merge_eval
    from workbench.errors import RunError

    run = Run.open(args.run)
    if run.kind != KIND:
        raise RunError(f"{args.run} is a {run.kind!r} run, not an SAE run")
    cfg = load_train_config(run.config)
    from workbench.devices import check_device

    device = check_device(args.device or cfg.acts.device)
    cfg.acts.device = device
    model = load_model(cfg.acts.model, device=device)
    modes = tuple(args.modes) if args.modes else None
    if (run.path / io.WEIGHTS).is_file():
        with torch.no_grad():
            result = evaluate_saved(run.path, model, cfg, args.tokens, modes=modes, ce=not args.no_ce, device=device)
        tokens_trained = cfg.tokens
    else:  # unfinished run: its last checkpoint
        ck = load_latest_checkpoint(run)
        if ck is None:
            raise RunError(f"{run.path} has neither {io.WEIGHTS} nor a checkpoint; train it first")
        from sae.model import build_sae

        raw = build_sae(cfg.sae)
        raw.load_state_dict(ck["sae"])
        sae = raw.folded(ck["scale"]).to(device)
        if sae.threshold_kind and (modes is None or "threshold" in modes):
            sae.set_mode("threshold")
        tokens_trained = ck["tokens"]
        print(f"{run.path} is unfinished: evaluating its checkpoint at {tokens_trained} tokens")
        with torch.no_grad():
            result = evaluate(sae, model, cfg.acts, args.tokens or cfg.eval_tokens,
                              modes=modes or tuple(dict.fromkeys((sae.mode, *sae.modes))), ce=not args.no_ce,
                              dead_tokens=cfg.dead_window)
    summary = eval_summary(result, cfg, tokens_trained)
    check_finite_eval(summary, run)
    with run.lock():  # not while a trainer writes this run
        try:
            stored = run.read_json("eval.json")
        except RunError:
            stored = {}
        summary = merge_eval(stored, summary)  # --no-ce / --modes never drop a stored field
        run.write_json("eval.json", summary)
    print(json.dumps(summary, indent=2) if args.json else format_eval(summary))
    return 0


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "analyze":
        return _analyze(args)
    return _train(args) if args.cmd == "train" else _eval(args)
