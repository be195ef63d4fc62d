"""`workbench acts cache|info`: cache activations at a hook to disk (Arrow, memory-mapped), inspect a cache."""

from __future__ import annotations

import argparse
import json

from workbench.config import add_arguments, from_args, to_dict


def build_parser() -> argparse.ArgumentParser:
    from workbench.acts import ActsConfig

    p = argparse.ArgumentParser(prog="workbench acts", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cache", help="stream activations from a model into an on-disk cache",
                       description="Run the model over a corpus and store activations at --hook as Arrow shards "
                                   "with a manifest (model, hook, tokens, dtype). Read them back with "
                                   "workbench.cache.ActivationCache or `workbench sae train --cache DIR`.")
    add_arguments(c, ActsConfig)
    c.add_argument("--tokens", type=lambda s: int(s.replace("_", "")), default=200_000,
                   help="activations to store (default 200_000)")
    c.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="storage dtype")
    c.add_argument("--out", help="cache directory (default: a new run dir runs/<name>/cache)")
    c.add_argument("--name", help="run name when --out is not given")
    c.add_argument("--root", default="runs", help="directory holding run dirs (default: runs)")
    i = sub.add_parser("info", help="print a cache's manifest after checking every shard")
    i.add_argument("path")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "info":
        from workbench.cache import ActivationCache

        cache = ActivationCache(args.path)
        print(json.dumps({k: v for k, v in cache.manifest.items() if k != "shards"}, indent=2))
        print(f"{len(cache.manifest['shards'])} shard(s), {len(cache)} rows, all present and intact")
        return 0
    return _cache(args)


def _cache(args) -> int:
    from pathlib import Path

    from workbench.acts import ActsConfig, cache_activations
    from workbench.runs import Run

    cfg = from_args(ActsConfig, args, shuffle_buffer=0)
    if args.out:
        out = Path(args.out)
    else:
        run = Run.create("acts", {**to_dict(cfg), "tokens": args.tokens}, name=args.name, root=args.root)
        out = run.path / "cache"
    path, stats = cache_activations(cfg, args.tokens, out, args.dtype)
    print(f"cached {stats['rows']} activations (d={stats['d']}) at {path} in {stats['seconds']:.1f}s "
          f"({stats['tokens_per_s']:.0f} tokens/s)")
    if not args.out:
        run.write_json("cache_stats.json", stats)
        run.set_status("done")
    return 0
