"""Benchmark: a full IOI evaluation of three SAEs (TopK, Feature Choice, Mutual Choice) on all cross-sections.

    .venv/bin/python bench/ioi_eval.py                      # toy-ioi, SAEs trained here if missing
    .venv/bin/python bench/ioi_eval.py --corpus toy         # full-distribution SAEs instead of task SAEs
    .venv/bin/python bench/ioi_eval.py --corpus toy --locations runs/ioi-locate-ordinal   # sections of `--s2 ordinal`

Steps:
1. ``workbench ioi locate`` (timed on its own) unless ``--locations`` is given;
2. SAEs: for each architecture and each distinct (hook, head) of the cross-sections, an SAE run in
   ``--sae-root`` is reused if present, else trained with ``workbench sae train`` (setup, not timed
   against the target); the SAEs of one architecture form one family (one ``--sae LABEL=...``);
3. the timed part: ``workbench ioi eval`` with the three families on every cross-section (target
   <= 3 minutes on 2 CPU cores), in-process through the front door, model load included.

Writes a JSON record (``--out``) with the timings, the machine and the SAEs' approximation rows.
"""

from __future__ import annotations

import workbench.threads  # noqa: F401 - first: OMP_WAIT_POLICY=PASSIVE before torch loads (docs/threads.md)

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ARCHS = {"topk": "topk", "fc": "feature-choice", "mc": "mutual-choice"}


def sae_run_name(arch: str, corpus: str, hook: str, head) -> str:
    return f"{arch}-{corpus}-{hook.replace('.', '_')}" + (f"-h{head}" if head is not None else "")


def has_sae(path: Path) -> bool:
    return (path / "cfg.json").is_file() and (path / "sae_weights.safetensors").is_file()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="toy-ioi")
    p.add_argument("--locations", help="locations.json or a locate run dir (default: run locate first)")
    p.add_argument("--cross-section", action="append", default=[], help="only these cross-sections (repeatable; default: all)")
    p.add_argument("--corpus", default="ioi", choices=("ioi", "toy"), help="SAE training corpus: ioi (task SAEs) or toy (full distribution)")
    p.add_argument("--sae-root", default="runs/bench-ioi-saes", help="where SAE runs are kept and reused")
    p.add_argument("--tokens", type=int, default=400_000, help="training tokens per SAE when one must be trained")
    p.add_argument("--dead-window", type=int, default=None,
                   help="tokens a latent must be silent to count as dead, for aux_k (default: a tenth of --tokens)")
    p.add_argument("--k", type=int, default=4, help="SAE k (mean active latents per token)")
    p.add_argument("--expansion", type=int, default=8, help="d_sae = expansion * d_in")
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--n-eval", type=int, default=500)
    p.add_argument("--runs-dir", default="runs", help="where the ioi run dirs go")
    p.add_argument("--out", default="bench/results/ioi_eval.json")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from cli.ioi import load_cross_sections
    from cli.main import main as wb

    record = {"model": args.model, "corpus": args.corpus, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
              "torch": torch.__version__, "python": platform.python_version(), "timings": {}}
    root = Path(args.runs_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.locations is None:
        t = time.perf_counter()
        name = f"bench-ioi-locate-{stamp}"
        assert wb(["ioi", "locate", "--model", args.model, "--device", args.device, "--runs-dir", str(root), "--name", name, "--quiet"]) == 0
        record["timings"]["locate_s"] = time.perf_counter() - t
        args.locations = str(root / name)
    located, sections = load_cross_sections(args.locations)
    s2 = located.get("config", {}).get("s2", "name")  # evaluate on the prompt form the sections were found on
    record["s2"] = s2
    if args.cross_section:
        sections = [cs for cs in sections if cs.name in args.cross_section]
    sites = sorted({(loc.hook, loc.head) for cs in sections for loc in cs.locations}, key=str)
    record["cross_sections"] = [cs.to_dict() for cs in sections]
    print(f"{len(sections)} cross-sections over {len(sites)} (hook, head) sites: {[cs.name for cs in sections]}", flush=True)

    sae_root = Path(args.sae_root)
    families, trained = {}, []
    t = time.perf_counter()
    for label, arch in ARCHS.items():
        paths = []
        for hook, head in sites:
            run = sae_root / sae_run_name(label, args.corpus, hook, head)
            if not has_sae(run):
                cmd = ["sae", "train", "--model", args.model, "--hook", hook, "--corpus", args.corpus, "--positions", "all",
                       "--arch", arch, "--k", str(args.k), "--expansion", str(args.expansion), "--tokens", str(args.tokens),
                       "--dead-window", str(args.dead_window or max(1, args.tokens // 10)),
                       "--batch-size", "1024", "--eval-tokens", "8192", "--checkpoint-every", "100000",
                       "--runs-dir", str(sae_root), "--name", run.name, "--device", args.device, "--quiet"]
                if head is not None:
                    cmd += ["--head", str(head)]
                print("training:", "workbench " + " ".join(cmd), flush=True)
                assert wb(cmd) == 0, f"SAE training failed: {cmd}"
                trained.append(run.name)
            paths.append(str(run))
        families[label] = paths
    record["timings"]["sae_setup_s"] = time.perf_counter() - t
    record["saes_trained_now"] = trained
    record["sae_families"] = families

    name = f"bench-ioi-eval-{args.corpus}-{stamp}"
    cmd = ["ioi", "eval", "--model", args.model, "--locations", args.locations, "--s2", s2, "--n-train", str(args.n_train),
           "--n-eval", str(args.n_eval), "--device", args.device, "--runs-dir", str(root), "--name", name, "--quiet"]
    for label, paths in families.items():
        cmd += ["--sae", f"{label}-{args.corpus}={','.join(paths)}"]
    for name_ in args.cross_section:
        cmd += ["--cross-section", name_]
    record["eval_command"] = "workbench " + " ".join(cmd)
    load_before = os.getloadavg()
    t, cpu = time.perf_counter(), time.process_time()
    assert wb(cmd) == 0
    record["timings"]["eval_s"] = time.perf_counter() - t
    record["timings"]["eval_cpu_s"] = time.process_time() - cpu
    record["load_average_before_after"] = [load_before, os.getloadavg()]  # other jobs on the machine slow the wall time
    run = root / name
    record["eval_run"] = str(run)
    record["timings"]["eval_inner"] = json.loads((run / "dictionaries.json").read_text())["timings"]
    record["approximation"] = json.loads((run / "approximation.json").read_text())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    ok = record["timings"]["eval_s"] <= 180
    print(f"full evaluation of 3 SAE families on {len(sections)} cross-sections: {record['timings']['eval_s']:.1f} s wall, "
          f"{record['timings']['eval_cpu_s']:.1f} s CPU, load average {load_before[0]:.1f} before "
          f"({'within' if ok else 'OVER'} the 3-minute target) on {os.cpu_count()} CPUs; record in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
