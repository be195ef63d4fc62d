"""`workbench model train|eval`: train the embedded toy model, or check a model on IOI."""

from __future__ import annotations

import argparse

from cli.common import add_quiet, add_runs_dir, check_name, examples
from workbench.config import add_arguments, from_args, to_dict

ACCEPT = {"accuracy": 0.9, "logit_diff": 2.5}


def build_parser() -> argparse.ArgumentParser:
    from workbench.config import ModelTrainConfig

    p = argparse.ArgumentParser(prog="workbench model", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the toy IOI model from scratch (~12 min on 2 cores)", prog="workbench model train",
                       description="Train the toy model on the toy world; IOI accuracy stays at chance for "
                                   "~2k steps, then jumps. Saves run_dir/model (and --out).",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=examples("workbench model train --name toy-v2",
                                       "workbench model train --steps 6000 --seed 1 --out my-model   # then --model my-model",
                                       "workbench model train --resume runs/toy-v2            # after an interruption"))
    add_arguments(t, ModelTrainConfig)
    t.add_argument("--name", help="run name (default: model-<time>)")
    add_runs_dir(t)
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    add_quiet(t)
    e = sub.add_parser("eval", help="IOI accuracy / logit difference on held-out names and template", prog="workbench model eval",
                       description="Print IOI accuracy and mean logit difference on training names, held-out "
                                   "names and the held-out template, and the LD when attention at END is ablated.")
    e.add_argument("--model", default="toy-ioi", help="toy-ioi, a model dir or a TransformerLens name")
    e.add_argument("--n", type=int, default=1000, help="prompts per split (default 1000)")
    e.add_argument("--device", default="cpu")
    e.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return _train(args) if args.cmd == "train" else _eval(args)


def _train(args) -> int:
    from workbench.config import ModelTrainConfig
    from workbench.runs import Run

    if args.resume:
        run = Run.open(args.resume)
        cfg = from_args(ModelTrainConfig, args, base=ModelTrainConfig(**run.config))
    else:
        check_name(args.name, args.runs_dir)
        cfg = from_args(ModelTrainConfig, args)
        run = Run.create("model", to_dict(cfg), name=args.name, root=args.runs_dir)
    if not args.quiet:
        print(f"run dir: {run.path}")
    from workbench.models import load_model
    from workbench.toy_train import evaluate, train

    model_dir = train(cfg, run, resume=bool(args.resume), progress=not args.quiet)
    res = evaluate(load_model(str(model_dir), cfg.device))
    run.write_json("eval.json", res)
    print(format_eval(res))
    return 0


def _eval(args) -> int:
    from workbench.models import load_model
    from workbench.toy_train import evaluate

    res = evaluate(load_model(args.model, args.device), n=args.n)
    print(format_eval(res))
    if args.json:
        from workbench.runs import atomic_write_json

        atomic_write_json(args.json, res)
    return 0


def format_eval(res: dict) -> str:
    lines = [f"{'split':<18} {'accuracy':>9} {'mean LD':>8}  (acceptance: acc >= {ACCEPT['accuracy']}, LD >= {ACCEPT['logit_diff']})"]
    for split in ("train_names", "heldout_names", "heldout_template"):
        r = res[split]
        ok = r["accuracy"] >= ACCEPT["accuracy"] and r["logit_diff"] >= ACCEPT["logit_diff"]
        lines.append(f"{split:<18} {r['accuracy']:>9.3f} {r['logit_diff']:>8.2f}  {'ok' if ok else 'BELOW TARGET'}")
    lines.append("mean LD on held-out names with attention output at END mean-ablated:")
    for k, v in res["ablation"].items():
        lines.append(f"  {k:<22} {v:>8.2f}")
    return "\n".join(lines)
