"""`workbench acts cache|info`: cache activations at a hook to disk (Arrow, memory-mapped), inspect a cache."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cli.common import add_quiet, add_runs_dir, check_name, examples, parse_int, subcommand
from workbench.config import add_arguments, from_args, to_dict


def build_parser() -> argparse.ArgumentParser:
    from workbench.config import ActsConfig

    p = argparse.ArgumentParser(prog="workbench acts", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = subcommand(sub, "cache", "workbench acts", "stream activations from a model into an on-disk cache",
                   description="Run the model over a corpus and store activations at --hook as Arrow shards "
                               "with a manifest (model, hook, tokens, dtype). Read them back with "
                               "workbench.cache.ActivationCache or `workbench sae train --cache DIR`.",
                   epilog=examples("workbench acts cache --hook blocks.1.hook_resid_post --tokens 400_000 --name acts-l1",
                                   "workbench acts cache --hook blocks.0.attn.hook_z --head 2 --corpus ioi --out caches/z-head2",
                                   "workbench acts cache --model gpt2 --hook blocks.6.hook_resid_post --corpus my.txt"))
    add_arguments(c, ActsConfig)
    c.add_argument("--tokens", type=parse_int, default=200_000, help="activations to store (default 200_000)")
    c.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="storage dtype")
    c.add_argument("--out", help="cache directory (default: a new run dir <runs-dir>/<name>/cache)")
    c.add_argument("--name", help="run name when --out is not given (default: acts-<time>)")
    add_runs_dir(c)
    add_quiet(c)
    i = sub.add_parser("info", help="print a cache's manifest after checking every shard", prog="workbench acts info")
    i.add_argument("path")
    return p


def ensure_cache(out: str | Path, model: str, hook: str, tokens: int) -> int:
    """`workbench acts cache` into out unless a complete cache is there already (a bench reuses one across
    its runs and restarts); returns the command's exit code (0 when the cache was there)."""
    if (Path(out) / "manifest.json").is_file():
        return 0
    from cli.main import main as workbench  # the front door: its errors are one line and an exit code

    return workbench(["acts", "cache", "--model", model, "--hook", hook, "--tokens", str(tokens), "--out", str(out)])


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "info":
        from workbench.cache import ActivationCache

        cache = ActivationCache(args.path)
        cache.verify()  # checksums and finiteness against the manifest: CacheError naming the bad shard
        print(json.dumps({k: v for k, v in cache.manifest.items() if k != "shards"}, indent=2))
        print(f"{len(cache.manifest['shards'])} shard(s), {len(cache)} rows, all present and intact"
              f"{'' if cache.has_checksums else ' (sizes and rows checked; this older cache has no checksums)'}")
        return 0
    return _cache(args)


def _cache(args) -> int:
    from pathlib import Path

    from workbench.config import ActsConfig
    from workbench.errors import ConfigError

    cfg = from_args(ActsConfig, args, shuffle_buffer=0)
    check_name(args.name, None if args.out else args.runs_dir)
    if args.tokens <= 0:
        raise ConfigError(f"tokens: must be positive, got {args.tokens}; pass --tokens > 0")
    from workbench.acts import cache_activations
    from workbench.models import load_model
    from workbench.runs import Run

    import contextlib

    model = load_model(cfg.model, cfg.device)  # after every argument is checked
    if args.out:
        out, run = Path(args.out), None
    else:
        run = Run.create("acts", {**to_dict(cfg), "tokens": args.tokens}, name=args.name, root=args.runs_dir)
        out = run.path / "cache"
    # one writer per run dir; Ctrl-C / SIGTERM / an error leave status 'interrupted' / 'failed', not 'running'
    with (run.lock() if run else contextlib.nullcontext()), (run.running() if run else contextlib.nullcontext()):
        path, stats = cache_activations(cfg, args.tokens, out, args.dtype, model=model, progress=not args.quiet)
        if run is not None:
            run.write_json("cache_stats.json", stats)
    print(f"cached {stats['rows']} activations (d={stats['d']}) at {path} in {stats['seconds']:.1f}s "
          f"({stats['tokens_per_s']:.0f} tokens/s)")
    return 0
