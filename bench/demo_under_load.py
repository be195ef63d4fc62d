"""The demo under a fixed background load, against the demo idle, measured in the same run.

    python bench/demo_under_load.py                         # the demo's SAE/IOI part, idle vs loaded, ABBA order
    python bench/demo_under_load.py --part full --rounds 1  # the whole demo (make demo's steps)
    python bench/demo_under_load.py --policy both           # also under load with OMP_WAIT_POLICY=ACTIVE (the old way)

The load is one busy process per core (``--load-procs``, default the number of cores), each a
single-threaded torch matmul loop at the same priority as the demo. Each demo run is a fresh process
(``python -m cli`` steps in a temporary runs dir), as `make demo` would be. Runs alternate idle /
loaded in ABBA order so a drift in the machine's other load hits both. Prints the wall time of each
run, the ratio loaded / idle (target <= 1.5 with the passive policy the CLI sets), and ``uptime``
before and after: on a shared machine "idle" means "without our load", so report it with the ratio.

    python bench/demo_under_load.py --scale 0.5 --load-procs 1      # a busy process beside the demo: 1.30x
    python bench/demo_under_load.py --scale 0.5 --rounds 0 --one-thread

With a busy process on every core the demo gets one core's worth of CPU (fair scheduling), so its ratio
cannot go below its one-thread slowdown, which ``--one-thread`` measures (docs/threads.md).
"""

from __future__ import annotations

import workbench.threads  # noqa: F401 - first: OMP_WAIT_POLICY=PASSIVE before torch loads (docs/threads.md)

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BURN = ("import torch\ntorch.set_num_threads(1)\na = torch.randn(256, 256)\n"
        "while True:\n    a = torch.tanh(a @ a) \n")


SCALED = ("--tokens", "--n-prompts", "--max-examples")  # not the IOI eval prompts: the harness needs >= 80 train prompts


def demo_steps(part: str, scale: float = 1.0) -> list[list[str]]:
    """argv of each `workbench` step: all of make demo's, or its SAE/IOI part (cache, TopK SAE, IOI locate + eval);
    with scale < 1 the token counts and the locate prompts shrink by that factor (a quicker, smaller demo)."""
    from cli.demo import STEPS

    steps = [_scaled(argv, scale) for _, argv in STEPS]
    if part == "full":
        return steps
    keep = []
    for argv in steps:
        if argv[:2] == ["acts", "cache"] or argv[:2] in (["ioi", "locate"], ["ioi", "eval"]) or \
                (argv[:2] == ["sae", "train"] and "topk" in argv):
            if argv[:2] == ["ioi", "eval"]:  # only the TopK SAE, which this part trains
                argv = [a for i, a in enumerate(argv) if not (a == "--sae" and "topk" not in argv[i + 1])
                        and not (i and argv[i - 1] == "--sae" and "topk" not in a)]
            keep.append(argv)
    return keep


def _scaled(argv: list[str], scale: float) -> list[str]:
    out = list(argv)
    for i, a in enumerate(argv[:-1]):
        if a in SCALED and scale != 1.0:
            out[i + 1] = str(max(1, int(int(argv[i + 1].replace("_", "")) * scale)))
    return out


def run_steps(steps: list[list[str]]) -> int:
    """In the child process: every step through the CLI front door, like the demo."""
    from cli.main import main

    for argv in steps:
        rc = main(argv)
        if rc:
            print(f"step failed ({rc}): workbench {' '.join(argv)}", file=sys.stderr)
            return rc
    return 0


def timed_demo(steps: list[list[str]], policy: str, log: Path, timeout: float | None = None, threads: int | None = None) -> float:
    """Wall seconds of one demo run in a fresh process and a fresh runs dir, with OMP_WAIT_POLICY=policy
    (inf when it ran past `timeout` and was stopped); threads: OMP_NUM_THREADS (default torch's choice)."""
    env = {**os.environ, "OMP_WAIT_POLICY": policy, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.pop("OMP_NUM_THREADS", None)  # torch's default thread count, as a user gets it
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory(prefix="demo-load-") as cwd, open(log, "a") as out:
        t0 = time.perf_counter()
        try:
            rc = subprocess.call([sys.executable, __file__, "--run-steps", json.dumps(steps)], cwd=cwd, env=env,
                                 stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            return float("inf")
        secs = time.perf_counter() - t0
    if rc:
        raise SystemExit(f"the demo failed (exit {rc}); see {log}")
    return secs


class Load:
    """n busy single-threaded torch processes, for the duration of a `with` block."""

    def __init__(self, n: int):
        self.n, self.procs = n, []

    def __enter__(self):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.procs = [subprocess.Popen([sys.executable, "-c", BURN], env=env) for _ in range(self.n)]
        time.sleep(2.0)  # let them start spinning
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait()


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("sae-ioi", "full"), default="sae-ioi", help="which demo steps (default sae-ioi)")
    p.add_argument("--scale", type=float, default=1.0, help="shrink the demo's token and prompt counts by this factor (default 1)")
    p.add_argument("--rounds", type=int, default=1, help="ABBA rounds: each is idle, loaded, loaded, idle (default 1)")
    p.add_argument("--load-procs", type=int, default=os.cpu_count() or 2, help="busy background processes (default: one per core)")
    p.add_argument("--policy", choices=("passive", "active", "both"), default="passive",
                   help="OMP_WAIT_POLICY of the demo: passive (what the CLI sets), active (torch's spinning), or both")
    p.add_argument("--timeout", type=float, default=None, help="stop a demo run after this many seconds (reported as > timeout)")
    p.add_argument("--one-thread", action="store_true",
                   help="also time the demo idle on one thread: its slowdown is what the demo costs on one core, the "
                        "fair-share bound when busy processes take the other core's worth")
    p.add_argument("--log", default=str(Path(tempfile.gettempdir()) / "demo_under_load.log"), help="the demo's output goes here")
    p.add_argument("--run-steps", help=argparse.SUPPRESS)  # internal: the child process that runs the demo
    args = p.parse_args()
    if args.run_steps:
        return run_steps(json.loads(args.run_steps))

    steps = demo_steps(args.part, args.scale)
    log = Path(args.log)
    log.write_text("")
    print(f"demo part: {args.part} ({len(steps)} steps, scale {args.scale}); load: {args.load_procs} busy process(es); "
          f"{os.cpu_count()} cores; log: {log}")
    print(f"before: {uptime()}", flush=True)
    subprocess.call([sys.executable, "-c", "import torch, transformer_lens"])  # warm the file cache, untimed
    policies = ["PASSIVE", "ACTIVE"] if args.policy == "both" else [args.policy.upper()]
    times: dict[str, list[float]] = {}

    def show(key: str, secs: float) -> None:
        shown = f"> {args.timeout:.0f} s (stopped)" if secs == float("inf") else f"{secs:7.1f} s"
        print(f"  {key:<16} {shown}   [{uptime().split('load average:')[-1].strip()}]", flush=True)
    for _ in range(args.rounds):
        for loaded in (False, True, True, False):
            for pol in policies if loaded else ["PASSIVE"]:
                key = f"{'loaded' if loaded else 'idle'} {pol.lower()}"
                if loaded:
                    with Load(args.load_procs):
                        secs = timed_demo(steps, pol, log, args.timeout)
                else:
                    secs = timed_demo(steps, pol, log, args.timeout)
                times.setdefault(key, []).append(secs)
                show(key, secs)
    if args.one_thread:
        if "idle passive" not in times:  # --rounds 0: one idle run to compare with
            times["idle passive"] = [timed_demo(steps, "PASSIVE", log, args.timeout)]
            show("idle passive", times["idle passive"][0])
        secs = timed_demo(steps, "PASSIVE", log, args.timeout, threads=1)
        times["idle passive, 1 thread"] = [secs]
        show("idle passive, 1 thread", secs)
    print(f"after:  {uptime()}")
    idle = statistics.median(times["idle passive"])
    if args.one_thread:
        print(f"one thread idle: {times['idle passive, 1 thread'][0] / idle:.2f}x idle on {os.cpu_count()} cores (the demo on one "
              "core's worth of CPU: what fair scheduling gives it when busy processes hold the rest)")
    for key, ts in times.items():
        if key.startswith("loaded") and "1 thread" not in key:
            ratio = statistics.median(ts) / idle
            verdict = "" if "active" in key else ("  (target <= 1.5: met)" if ratio <= 1.5 else "  (target <= 1.5: NOT met)")
            print(f"{key}: median {statistics.median(ts):.1f} s = {ratio:.2f}x idle ({idle:.1f} s){verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
