"""`workbench sae train | eval | analyze`: thin argparse front ends over sae.trainer and sae.metrics.

Every training flag maps to one config field (``--k`` -> SAEConfig.k, ``--hook`` -> ActsConfig.hook,
``--tokens`` -> TrainConfig.tokens); ``--resume RUN`` continues a run from its last checkpoint with the
config stored in the run (flags given next to it must agree with that config).
"""

from __future__ import annotations

import argparse
import json


def _parser() -> argparse.ArgumentParser:
    from workbench.acts import ActsConfig
    from workbench.config import add_arguments

    from sae.config import SAEConfig, TrainConfig

    p = argparse.ArgumentParser(prog="workbench sae", description="Train and evaluate sparse autoencoders (TopK, Feature Choice, Mutual Choice, ReLU+L1).")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train an SAE on activations at a hook", prog="workbench sae train")
    add_arguments(t.add_argument_group("activations"), ActsConfig)
    add_arguments(t.add_argument_group("autoencoder"), SAEConfig)
    add_arguments(t.add_argument_group("training"), TrainConfig)
    t.add_argument("--resume", metavar="RUN", default=None, help="continue this run directory from its last checkpoint")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    e = sub.add_parser("eval", help="evaluate a trained SAE run on held-out tokens", prog="workbench sae eval")
    e.add_argument("run", help="run directory written by `workbench sae train`")
    e.add_argument("--tokens", type=lambda s: int(s.replace("_", "")), default=None, help="held-out tokens (default: the run's eval_tokens)")
    e.add_argument("--modes", nargs="+", choices=("batch", "threshold"), default=None, help="allocation modes (default: all the SAE supports)")
    e.add_argument("--device", default=None, help="torch device (default: the run's)")
    e.add_argument("--no-ce", action="store_true", help="skip the CE-loss-recovered forward passes")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    from sae.analyze import add_parser as add_analyze

    add_analyze(sub)  # `workbench sae analyze RUN`: the app's feature-browser data
    return p


def _config_from_args(args):
    from workbench.acts import ActsConfig
    from workbench.config import from_args

    from sae.config import SAEConfig, TrainConfig

    return from_args(TrainConfig, args, acts=from_args(ActsConfig, args), sae=from_args(SAEConfig, args))


def _resume_config(args):
    """The run's stored config; any flag passed alongside --resume must agree with it."""
    import dataclasses

    from workbench.acts import ActsConfig
    from workbench.errors import ConfigError
    from workbench.runs import Run

    from sae.config import SAEConfig, TrainConfig, load_train_config

    cfg = load_train_config(Run.open(args.resume).config)
    given = {k: v for k, v in vars(args).items() if k not in ("cmd", "resume", "no_progress")}
    for section, cls in ((cfg.acts, ActsConfig), (cfg.sae, SAEConfig), (cfg, TrainConfig)):
        for f in dataclasses.fields(cls):
            if f.name in given and not dataclasses.is_dataclass(getattr(section, f.name)):
                stored = getattr(section, f.name)
                if f.name in ("d_in", "d_sae") and cfg.sae.d_sae is not None and given[f.name] is None:
                    continue
                if given[f.name] != stored:
                    raise ConfigError(f"{f.name}: --resume {args.resume} was started with {f.name}={stored!r}, "
                                      f"not {given[f.name]!r}; drop --{f.name.replace('_', '-')} to continue that run")
    return cfg


def _train(args) -> int:
    from sae.trainer import train

    cfg = _resume_config(args) if args.resume else _config_from_args(args)
    run = train(cfg, resume=args.resume, progress=not args.no_progress)
    s = run.read_json("eval.json")
    print(f"run {run.path}: {format_eval(s)}")
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
                     f"dead {100 * r['dead_frac']:.1f}% (silent on all{window})")
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
    from sae.trainer import KIND, eval_summary, evaluate_saved, load_latest_checkpoint
    from workbench.errors import RunError

    run = Run.open(args.run)
    if run.kind != KIND:
        raise RunError(f"{args.run} is a {run.kind!r} run, not an SAE run")
    cfg = load_train_config(run.config)
    device = args.device or cfg.acts.device
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
    run.write_json("eval.json", summary)
    print(json.dumps(summary, indent=2) if args.json else format_eval(summary))
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "analyze":
        from sae.analyze import main as analyze_main

        return analyze_main(args)
    return _train(args) if args.cmd == "train" else _eval(args)
