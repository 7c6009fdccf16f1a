"""Run every benchmark, one after the other, each in its own process with its own servers.

    .venv/bin/python bench/run_all.py           # the full set (about 3 minutes on 2 cores, plus the engine
                                                # benchmarks: engine, engine_standin and video, about 12 minutes)
    .venv/bin/python bench/run_all.py --quick   # one run each, shorter windows (about 5 minutes on 2 cores, plus
                                                # 1.5 for the engine benchmarks)
    .venv/bin/python bench/run_all.py --only holds

Each script prints its figures and a summary with the targets; JSON results land in bench/out/ (git-ignored).
bench/jobs.py drives the API with Debian's `wrk` (`make bench-tools` installs it); without it, it falls back to a
Python client and prints a note saying so."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name: (arguments for the full run, arguments for --quick); a name with a variant suffix runs its script's variant.
SCRIPTS = {"holds_lots": "holds", "jobs_abuse": "jobs"}
# name: (arguments for the full run, arguments for --quick)
BENCHMARKS = {
    "batch_recharge": ([], ["--runs", "1"]),
    "batch_phases": ([], ["--runs", "1"]),
    "holds": ([], ["--runs", "1", "--seconds", "5"]),
    # What credit lots cost a reserve+capture cycle: 1 and 5 lots per account against the lotless functions.
    "holds_lots": (["--lots"], ["--lots", "--runs", "1", "--seconds", "3", "--accounts", "500"]),
    # A recurring grant's run over 10,000 users (platform-issued, rerun, pool-paid); --quick: 1,000 users, one run.
    "grants": ([], ["--users", "1000", "--runs", "1", "--baseline", "200"]),
    "engine": ([], ["--quick"]),  # the swap engine on the CPU (run when bench/engine.py is present)
    # The engine on stand-in models (real compute): per-stage times at 720p/1080p/4K; --quick: 1080p, one run.
    "engine_standin": ([], ["--quick"]),
    # Video: Engine.swap_video against a plain frame loop, peak RSS short vs long clip; --quick: 3 s and 12 s clips,
    # no stand-ins.
    "video": ([], ["--quick"]),
    # Metered jobs through HTTP and real workers; the load generator is wrk (`make bench-tools`), else httpx.
    "jobs": ([], ["--seconds", "4", "--rounds", "1", "--e2e-jobs", "100"]),
    # What the abuse rules cost a submit: the tenant's rules on and off.
    "jobs_abuse": (["--abuse-rules"], ["--abuse-rules", "--seconds", "3", "--rounds", "1"]),
    # API processes and workers against one Postgres; --quick: 1+1, 2+2 and 4+4, 30 jobs each.
    "scale": ([], ["--quick"]),
    "exports": ([], []),  # finance exports and reconciliation over 1,000,000 entries
    "sealing": ([], ["--entries", "200000", "--seconds", "4", "--runs", "1", "--no-index-cost"]),
    # Console pages and fragments (p95) and the first load; --quick: a tenth of the seed, 5 runs per URL.
    "console": ([], ["--quick"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append")
    parser.add_argument("--time-limit", type=int, default=1500, help="seconds per benchmark (each also bounds itself)")
    args = parser.parse_args()
    failed = []
    for name, (full, quick) in BENCHMARKS.items():
        script = HERE / f"{SCRIPTS.get(name, name)}.py"
        if (args.only and name not in args.only) or not script.exists():
            continue
        command = [sys.executable, str(script), *(quick if args.quick else full)]
        print(f"\n##### {name}: {' '.join(command[1:])}  (load average {os.getloadavg()[0]:.2f})", flush=True)
        started = time.perf_counter()
        proc = subprocess.Popen(command, cwd=HERE.parent)
        try:
            code = proc.wait(timeout=args.time_limit)
        except BaseException as exc:  # the time limit or Ctrl-C: SIGTERM lets the benchmark stop its servers
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if not isinstance(exc, subprocess.TimeoutExpired):
                raise
            code = -1
        print(f"##### {name}: exit {code} after {time.perf_counter() - started:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
