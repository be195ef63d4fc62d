"""How long each app page takes to rerun once its data is cached, against Streamlit's own floor, in one run.

    .venv/bin/python bench/app_pages.py [--runs-dir runs] [--repeats 5]

Baseline: the Home page on an empty runs directory (Streamlit's script run and widget tree, no data).
Ours: each page on a real run of its kind from --runs-dir (the first SAE, IOI-eval and MoE run found),
run once to fill the caches, then rerun; the best of --repeats reruns is reported, as seconds and as a
ratio to the baseline. Target (moved here from tests/app): every warm page rerun < 3 s on this machine.
"""

from __future__ import annotations

import workbench.threads  # noqa: F401 - first: OMP_WAIT_POLICY=PASSIVE before torch loads (docs/threads.md)

import argparse
import os
import tempfile
import time
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "app"
TARGET_S = 3.0


def _page(page: str | None, runs: str, run: str | None):
    from streamlit.testing.v1 import AppTest

    os.environ["WORKBENCH_RUNS"] = runs
    at = AppTest.from_file(str(APP / "Home.py"), default_timeout=120)
    if page:
        at.switch_page(f"pages/{page}")
    if run:
        at.query_params["run"] = run
    at.run()  # cold: fills the caches
    if at.exception:
        raise SystemExit(f"{page or 'Home'} raised: {[e.value for e in at.exception]}")
    return at


def best_rerun(at, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        at.run()
        best = min(best, time.perf_counter() - t0)
    return best


def first_run_of(runs: Path, kind: str, command: str | None = None) -> str | None:
    from workbench.runs import list_runs

    for r in list_runs(runs):
        if r.run is not None and r.meta.get("kind") == kind and (command is None or r.meta.get("config", {}).get("command") == command):
            return r.path.name
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    runs = Path(args.runs_dir)
    pages = [("1_Runs.py", None), ("2_Feature_browser.py", first_run_of(runs, "sae")),
             ("3_IOI_evaluation.py", first_run_of(runs, "ioi", "eval")), ("4_Routing.py", first_run_of(runs, "moe"))]
    with tempfile.TemporaryDirectory() as empty:
        base = best_rerun(_page(None, empty, None), args.repeats)
    print(f"load: {os.getloadavg()[0]:.2f} (1 min)   baseline (Home, empty runs dir): {base:.3f} s")
    print(f"{'page':<24} {'run':<28} {'warm s':>8} {'x base':>8}  target < {TARGET_S:.0f} s")
    ok = True
    for page, run in pages:
        if page != "1_Runs.py" and run is None:
            print(f"{page:<24} {'(no run of this kind)':<28}")
            continue
        s = best_rerun(_page(page, str(runs), run), args.repeats)
        ok &= s < TARGET_S
        print(f"{page:<24} {run or '-':<28} {s:8.3f} {s / base:8.1f}  {'ok' if s < TARGET_S else 'SLOW'}")
    print("all pages within target" if ok else "some pages missed the target")


if __name__ == "__main__":
    main()
