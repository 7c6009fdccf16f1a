"""The swap engine on stand-in models (the real models' architectures with random weights: `write_standin_models`)
on this CPU: `Engine.swap`'s per-stage times at 720p, 1080p and 4K with one face, the face enhancer off and on, and
each model's `session.run` alone with its multiply-accumulates (what a GPU has to beat).

    .venv/bin/python bench/engine_standin.py            # 3 runs per case (about 5 minutes on 2 cores, bounded at 15)
    .venv/bin/python bench/engine_standin.py --quick    # 1080p only, 1 run per case (about 1 minute, bounded at 3)

The stand-ins are written once into $TMPDIR/facemint-bench-video/models-standin (about 1.1 GB, 10 s; shared with
bench/video.py). They carry the demo models' small "guide" graphs, so the engine finds, embeds and swaps the demo
faces `draw_demo_face` paints (the same targets as bench/engine.py: a dark, noisy JPEG, one face of 30 % of the
image height), while computing what the real networks compute. The detector always runs at 640x640 (the engine's
det_size) and the other models at their fixed sizes, so the model stages cost the same at every resolution; decode,
paste and encode grow with the pixels.

Prints markdown tables, a summary and a block ready to paste into docs/benchmarks.md; JSON lands in
bench/out/engine_standin.json (git-ignored). The machine may be shared: the load average is printed."""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from engine import RESOLUTIONS, cpu_model, jpeg, median_ms, peak_rss_mib, section, source_image, target_image, versions
from video import models

from inference.engine import Engine, EngineConfig
from inference.models import standin_counts
from inference.providers import ProviderChoice

HERE = Path(__file__).resolve().parent
STAGES = ("decode", "detect", "embed", "swap", "paste", "enhance", "encode", "total")
PROCESSORS = {"off": "face_swapper", "on": "face_swapper,face_enhancer"}
JPEG_QUALITY = 90
REPORT: list[str] = []


class TimeLimit(Exception):
    pass


def _raise_limit(signum: int, frame: object) -> None:
    raise TimeLimit(f"the benchmark ran past its time limit (signal {signum})")


def emit(line: str = "") -> None:
    print(line, flush=True)
    REPORT.append(line)


def stage_times(engine: Engine, resolutions: list[str], runs: int, warmup: int) -> dict[str, dict[str, float]]:
    """Median of each stage over `runs` swaps per case (after `warmup` rounds), the cases taking turns so that a
    change in the machine's load spreads over all of them; also the median CPU time of the process per swap."""
    source = jpeg(source_image())
    targets = {name: jpeg(target_image(*RESOLUTIONS[name], faces=1, seed=20 + i)) for i, name in enumerate(resolutions)}
    cases = [(name, enhancer) for name in resolutions for enhancer in PROCESSORS]
    samples: dict[tuple[str, str], list[dict[str, float]]] = {case: [] for case in cases}
    for turn in range(warmup + runs):
        for name, enhancer in cases:
            cpu = time.process_time()
            result = engine.swap(
                source,
                targets[name],
                output_format="jpeg",
                quality=JPEG_QUALITY,
                processors=PROCESSORS[enhancer],
            )
            cpu_ms = (time.process_time() - cpu) * 1000
            if result.faces_swapped != 1:
                sys.exit(f"{name}: the engine swapped {result.faces_swapped} faces, not 1; the inputs are wrong")
            if turn >= warmup:
                samples[(name, enhancer)].append({**result.timings_ms, "cpu": cpu_ms})
        print(f"- round {turn + 1} of {warmup + runs} done (load {os.getloadavg()[0]:.2f})", flush=True)
    emit("| target | enhancer | " + " | ".join(STAGES) + " | CPU time |")
    emit("|---|---|" + "---:|" * (len(STAGES) + 1))
    results: dict[str, dict[str, float]] = {}
    for (name, enhancer), timings in samples.items():
        medians = {stage: statistics.median(t.get(stage, 0.0) for t in timings) for stage in (*STAGES, "cpu")}
        results[f"{name}/{enhancer}"] = medians
        width, height = RESOLUTIONS[name]
        cells = " | ".join(
            "-" if stage == "enhance" and enhancer == "off" else f"{medians[stage]:,.0f}" for stage in (*STAGES, "cpu")
        )
        emit(f"| {name} ({width}x{height}) | {enhancer} | {cells} |")
    return results


def random_feeds(session: Any, det_size: int) -> dict[str, np.ndarray]:
    """Random float32 inputs of each input's shape: an unknown first dimension is 1, any other the det size."""
    rng = np.random.default_rng(0)
    feeds = {}
    for value in session.get_inputs():
        shape = [
            dim if isinstance(dim, int) and dim > 0 else (1 if i == 0 else det_size)
            for i, dim in enumerate(value.shape)
        ]
        feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def model_sessions(engine: Engine) -> dict[str, Any]:
    """The engine's ONNX Runtime sessions by role (the detector's at the engine's det size)."""
    size = engine.config.det_size
    found = {
        "detector": engine._detector.resolution_sessions[(size, size)],
        "recognizer": engine._recognizer.session,
        "swapper": engine._swapper.session,
    }
    if engine._enhancer is not None:
        found["enhancer"] = engine._enhancer.session
    return found


def model_runs(engine: Engine, runs: int) -> dict[str, dict[str, float]]:
    """Each model's session.run alone, median ms, with its multiply-accumulates from the graph."""
    size = engine.config.det_size
    emit("| model (stand-in) | input | GMACs | session.run, ms (median) | GFLOP/s |")
    emit("|---|---|---:|---:|---:|")
    results = {}
    for role, session in model_sessions(engine).items():
        feeds = random_feeds(session, size)
        ms = median_ms(lambda s=session, f=feeds: s.run(None, f), runs)
        counts = standin_counts(role, det_size=(size, size))
        gmacs = counts.flops / 1e9
        results[role] = {"ms": ms, "gmacs": gmacs, "gflops_per_s": 2 * gmacs / (ms / 1000)}
        shapes = " + ".join("x".join(str(d) for d in f.shape) for f in feeds.values())
        emit(f"| {role} | {shapes} | {gmacs:.2f} | {ms:,.0f} | {2 * gmacs / (ms / 1000):.0f} |")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1080p only, one run per case, no model table")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per case (default 3, quick 1)")
    parser.add_argument("--json", type=Path, default=HERE / "out" / "engine_standin.json")
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    resolutions = ["1080p"] if args.quick else list(RESOLUTIONS)
    limit = 180 if args.quick else 900
    signal.signal(signal.SIGALRM, _raise_limit)
    signal.alarm(limit)
    started = time.perf_counter()
    env = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "versions": versions(),
        "load_average_start": round(os.getloadavg()[0], 2),
        "runs": runs,
    }
    print("## Engine benchmark (CPU, stand-in models)\n")
    emit(f"- CPU: {env['cpu']}, {env['cores']} cores; {platform.system()} {platform.machine()}")
    emit("- " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    print(f"- load average at start: {env['load_average_start']:.2f}; time limit {limit} s")
    directory = models("standin")
    clock = time.perf_counter()
    engine = Engine.load(EngineConfig(models_dir=directory, provider=ProviderChoice.cpu))
    load_s = time.perf_counter() - clock
    emit(
        f"- Engine.load: {load_s:.1f} s on {', '.join(engine.providers)} ({engine.model_set} models, "
        f"{', '.join(engine.processors)}); {runs} timed run(s) per case (median), one face, JPEG in and out"
    )
    emit()
    results: dict[str, Any] = {"environment": env, "load_s": load_s}
    with section("Per-stage times, ms (median; one face of 30 % of the height; enhancer off / on)"):
        results["stages"] = stage_times(engine, resolutions, runs, warmup=0 if args.quick else 1)
    if not args.quick:
        with section("Model compute alone (stand-ins, session.run on random inputs)"):
            emit()
            results["models"] = model_runs(engine, max(runs, 3))
    results["rss_peak_mib"] = peak_rss_mib()
    results["load_average_end"] = round(os.getloadavg()[0], 2)
    summary(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"\n{time.perf_counter() - started:.0f} s in all; JSON in {args.json}")


def summary(results: dict[str, Any]) -> None:
    stages = results["stages"]
    load = f"load average {results['environment']['load_average_start']:.2f} -> {results['load_average_end']:.2f}"
    lines = []
    for key, medians in stages.items():
        name, enhancer = key.split("/")
        model_ms = sum(medians[s] for s in ("detect", "embed", "swap", "enhance"))  # medians: may exceed the total
        lines.append(
            f"- {name}, enhancer {enhancer}: {medians['total'] / 1000:.2f} s per image, "
            f"{1000 / medians['total']:.2f} images/s; the models about {min(model_ms / medians['total'], 1):.0%} of it"
        )
    lines.append(f"- peak RSS {results['rss_peak_mib']:.0f} MiB; {load}")
    print("\n### Summary\n")
    print("\n".join(lines))
    print("\n### Ready to paste (docs/benchmarks.md, Part 6)\n")
    print("```markdown")
    print(f"`bench/engine_standin.py`, {time.strftime('%Y-%m-%d %H:%M')} ({load}):\n")
    print("\n".join(REPORT))
    print()
    print("\n".join(lines))
    print("```")


if __name__ == "__main__":
    try:
        main()
    except TimeLimit as exc:
        sys.exit(str(exc))
