"""`workbench model train|eval`: train the embedded toy model, or check a model on IOI."""

from __future__ import annotations

import argparse

from cli.common import add_quiet, add_runs_dir, check_name, examples, subcommand
from workbench.config import add_arguments, from_args, to_dict

RESUMABLE = ("train",)  # subcommands with --resume (cli.main names them after an interruption)

ACCEPT = {"accuracy": 0.9, "logit_diff": 2.5, "accuracy_pos": 0.85, "top1": 0.8}


def build_parser() -> argparse.ArgumentParser:
    from workbench.config import ModelTrainConfig

    p = argparse.ArgumentParser(prog="workbench model", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = subcommand(sub, "train", "workbench model", "train the toy IOI model from scratch (~25-40 min on 2 cores)",
                   description="Train the toy model on the toy world (IOI prompts from the grammar in "
                               "workbench/grammar.py, general text); IOI accuracy stays at chance for ~1k steps, "
                               "then jumps. Saves run_dir/model (and --out). Recipe: docs/toy-model.md.",
                   epilog=examples("workbench model train --name toy-v2",
                                   "workbench model train --steps 6000 --seed 1 --out my-model   # then --model my-model",
                                   "workbench model train --resume runs/toy-v2            # after an interruption"))
    add_arguments(t, ModelTrainConfig)
    t.add_argument("--name", help="run name (default: model-<time>)")
    add_runs_dir(t)
    t.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    add_quiet(t)
    e = subcommand(sub, "eval", "workbench model",
                   "IOI acceptance on every held-out split and frame family, or score your own prompt",
                   description="Print IOI accuracy (LD > 0; ABB and BAB), mean logit difference and top-1 accuracy "
                               "on training names and the held-out splits (names, productions, lengths), per frame "
                               "family, and the LD when attention at END is ablated. With --prompt, score prompts you write.",
                   epilog=examples("workbench model eval",
                                   'workbench model eval --prompt "Mary and John went home . John gave a book to"',
                                   "workbench model eval --model runs/toy-v2/model --n 300 --json eval.json"))
    e.add_argument("--model", default="toy-ioi", help="toy-ioi, a model dir or a TransformerLens name")
    e.add_argument("--n", type=int, default=1000, help="prompts per split (default 1000)")
    e.add_argument("--device", default="cpu")
    e.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    e.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                   help="score this IOI prompt instead (repeatable), e.g. \"Mary and John went home . John gave a book to\"")
    e.add_argument("--io", help="with --prompt: the answer (default: the name that occurs once)")
    e.add_argument("--s", help="with --prompt: the subject (default: the name that occurs twice)")
    h = sub.add_parser("health", help="token-norm distribution at every residual hook (massive activations)",
                       description="Median, p99 and max of token norms at each residual-stream hook over the toy "
                                   "corpus (BOS excluded), the share of tokens above 3x the median and where they are.")
    h.add_argument("--model", default="toy-ioi", help="toy-ioi or a model dir")
    h.add_argument("--n", type=int, default=512, help="sequences of the toy corpus (default 512)")
    h.add_argument("--device", default="cpu")
    h.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return {"train": _train, "eval": _eval, "health": _health}[args.cmd](args)


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

    with run.lock(), run.running():  # one writer per run dir; SIGTERM / Ctrl-C leave status 'interrupted'
        model_dir = train(cfg, run, resume=bool(args.resume), progress=not args.quiet)
        res = evaluate(load_model(str(model_dir), cfg.device))
        run.write_json("eval.json", res)
    print(format_eval(res))
    return 0


def _eval(args) -> int:
    from workbench.models import load_model
    from workbench.toy_train import evaluate

    if args.prompt:
        from workbench.ioi import score_prompt

        model = load_model(args.model, args.device)
        for text in args.prompt:
            r = score_prompt(model, text, args.io, args.s)
            top = ", ".join(f"{w} {p:.2f}" for w, p in r["top"])
            print(f"{text}\n  IO {r['io']}  S {r['s']}  LD {r['logit_diff']:.2f}  p(IO) {r['p_io']:.2f}  "
                  f"IO is top-1: {'yes' if r['top1'] else 'no'}  top: {top}")
        return 0
    res = evaluate(load_model(args.model, args.device), n=args.n)
    print(format_eval(res))
    if args.json:
        from workbench.runs import atomic_write_json

        atomic_write_json(args.json, res)
    return 0


def _health(args) -> int:
    from workbench.health import format_norms, token_norms
    from workbench.models import load_model

    stats = token_norms(load_model(args.model, args.device), n_seqs=args.n)
    print(format_norms(stats))
    if args.json:
        from workbench.runs import atomic_write_json

        atomic_write_json(args.json, stats)
    return 0


def passes(r: dict) -> bool:
    """The acceptance of one split / family: accuracy, per-Pos accuracy, mean LD and top-1."""
    return (r["accuracy"] >= ACCEPT["accuracy"] and r["logit_diff"] >= ACCEPT["logit_diff"]
            and min(r.get("accuracy_ABB", 1), r.get("accuracy_BAB", 1)) >= ACCEPT["accuracy_pos"]
            and r.get("top1", 1) >= ACCEPT["top1"])


def _row(label: str, r: dict) -> str:
    return (f"{label:<34} {r['accuracy']:>6.3f} {r.get('accuracy_ABB', float('nan')):>6.3f} {r.get('accuracy_BAB', float('nan')):>6.3f} "
            f"{r['logit_diff']:>7.2f} {r.get('top1', float('nan')):>6.3f}  {'ok' if passes(r) else 'BELOW TARGET'}")


def format_eval(res: dict) -> str:
    lines = [f"acceptance: accuracy (LD > 0) >= {ACCEPT['accuracy']}, ABB and BAB each >= {ACCEPT['accuracy_pos']}, "
             f"mean LD >= {ACCEPT['logit_diff']}, top-1 >= {ACCEPT['top1']}",
             f"{'split':<34} {'acc':>6} {'ABB':>6} {'BAB':>6} {'LD':>7} {'top-1':>6}"]
    splits = [k for k in res if k not in ("families", "ablation")]
    for split in splits:
        lines.append(_row(split, res[split]))
    for family, by_split in res.get("families", {}).items():
        for split, r in by_split.items():
            lines.append(_row(f"{family} / {split}", r))
    lines.append("mean LD on held-out names with attention output at END mean-ablated:")
    for k, v in res["ablation"].items():
        lines.append(f"  {k:<22} {v:>8.2f}")
    return "\n".join(lines)
