"""The swap engine's speed on the CPU, on demo models: per-stage times, paste-back against insightface's stock
paste-back, the time per face beyond model compute, throughput with threads sharing one Engine, and peak RSS.

    .venv/bin/python bench/engine.py            # full (about 2 minutes on 2 cores, bounded at 5)
    .venv/bin/python bench/engine.py --quick    # fewer runs (about 30 s, bounded at 1 minute)

Everything runs in this process on generated inputs: demo models (`inference.models.write_demo_models`, in a
temporary directory) and JPEG targets with a dark, noisy background and demo faces of realistic size (one face of
30 % of the image height, or four of 15 %). The demo models compute almost nothing (the recogniser and swapper are
a pooling and a few small matrix products, well under 1 ms; the detector a few convolutions at 640x640, some 25 ms
per pass here, two passes per swap: target and source), so these figures measure the pipeline's own pre- and
post-processing cost: decoding, resizing, alignment, paste-back, encoding. With the real models, add their
`session.run` times (the "Model compute alone" table shows what the demo models' cost, to subtract).

Prints markdown tables and a summary against the targets (no assertions: figures only); JSON lands in
bench/out/engine.json (git-ignored). The machine may be shared: the load average is printed with the figures."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from inference.engine import Engine, EngineConfig
from inference.media import decode_image
from inference.models import draw_demo_face, write_demo_models
from inference.paste import paste_face
from inference.providers import ProviderChoice

HERE = Path(__file__).resolve().parent
STAGES = ("decode", "detect", "embed", "swap", "paste", "encode", "total")
RESOLUTIONS = {"720p": (1280, 720), "1080p": (1920, 1080), "4K": (3840, 2160)}
FACE_COUNTS = (1, 4)
THREADS = (1, 2, 4)
JPEG_QUALITY = 90
TARGET_PASTE_SPEEDUP = {"1080p": 10.0, "4K": 20.0}
TARGET_PER_FACE_MS = 30.0

Image = np.ndarray


class TimeLimit(Exception):
    pass


def _raise_limit(signum: int, frame: object) -> None:
    raise TimeLimit(f"the benchmark ran past its time limit (signal {signum})")


# --- inputs --------------------------------------------------------------------------------------------------


def background(width: int, height: int, seed: int) -> Image:
    """Dark, noisy and smooth enough to look like a dim photo to JPEG: low-frequency blobs plus pixel noise,
    every channel <= 85 (the demo detector's background rule)."""
    rng = np.random.default_rng(seed)
    low = rng.integers(5, 70, (height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8)
    image = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    image += rng.integers(-10, 11, (height, width, 3), dtype=np.int16)
    return np.clip(image, 0, 80).astype(np.uint8)


def target_image(width: int, height: int, faces: int, seed: int) -> Image:
    """One face of 30 % of the height, a little off-centre; or four of 15 % spread across the frame."""
    image = background(width, height, seed)
    if faces == 1:
        side = round(0.30 * height)
        draw_demo_face(image, round(0.42 * width), round(0.28 * height), side, identity=2)
    else:
        side = round(0.15 * height)
        places = [(0.10, 0.30), (0.33, 0.52), (0.56, 0.25), (0.79, 0.48)][:faces]
        for i, (fx, fy) in enumerate(places):
            draw_demo_face(image, round(fx * width), round(fy * height), side, identity=2 + i)
    return image


def source_image() -> Image:
    image = background(800, 800, 1)
    draw_demo_face(image, 240, 220, 320, identity=1)
    return image


def jpeg(image: Image) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    assert ok
    return data.tobytes()


# --- measuring -----------------------------------------------------------------------------------------------


def median_ms(fn: Callable[[], object], runs: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def peak_rss_mib() -> float:
    """This process's peak RSS: VmHWM (ru_maxrss would carry the parent's peak over fork and exec)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "opencv": cv2.__version__, "numpy": np.__version__}
    for name in ("onnxruntime", "onnxruntime-gpu", "insightface", "onnx"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


@contextmanager
def section(title: str) -> Iterator[None]:
    print(f"\n### {title}\n", flush=True)
    started = time.perf_counter()
    yield
    print(f"\n({time.perf_counter() - started:.1f} s, load average {os.getloadavg()[0]:.2f})", flush=True)


@dataclass
class Inputs:
    source: bytes
    targets: dict[tuple[str, int], bytes]  # (resolution, faces) -> JPEG
    pixels: dict[tuple[str, int], Image]  # the decoded targets (what the engine sees)


def make_inputs() -> Inputs:
    targets, pixels = {}, {}
    for seed, (name, (width, height)) in enumerate(RESOLUTIONS.items()):
        for faces in FACE_COUNTS:
            data = jpeg(target_image(width, height, faces, seed=10 + seed * 10 + faces))
            targets[(name, faces)] = data
            pixels[(name, faces)] = decode_image(data).pixels
    return Inputs(source=jpeg(source_image()), targets=targets, pixels=pixels)


# --- the benchmarks ------------------------------------------------------------------------------------------


def stage_times(engine: Engine, inputs: Inputs, runs: int) -> dict[str, dict[str, float]]:
    """Median of each stage over `runs` swaps after one warm-up, faces="all", JPEG out; also the best total and
    the median CPU time of the process per swap (less sensitive to other processes than wall time). The cases take
    turns (round robin), so that a change in the machine's load spreads over all of them alike."""
    samples: dict[tuple[str, int], list[dict[str, float]]] = {key: [] for key in inputs.targets}
    for i in range(runs + 1):
        for (name, faces), data in inputs.targets.items():
            cpu_started = time.process_time()  # all threads of this process, ONNX Runtime's included
            result = engine.swap(inputs.source, data, faces="all", output_format="jpeg", quality=JPEG_QUALITY)
            cpu_ms = (time.process_time() - cpu_started) * 1000
            if result.faces_swapped != faces:
                sys.exit(f"{name} {faces} face(s): the engine swapped {result.faces_swapped}; the inputs are wrong")
            if i:
                samples[(name, faces)].append({**result.timings_ms, "cpu": cpu_ms})
    results: dict[str, dict[str, float]] = {}
    columns = (*STAGES, "best_total", "cpu")
    print("| target | faces | " + " | ".join(STAGES) + " | best total | CPU time |")
    print("|---|---:|" + "---:|" * len(columns))
    for (name, faces), timings in samples.items():
        medians = {stage: statistics.median(t.get(stage, 0.0) for t in timings) for stage in (*STAGES, "cpu")}
        medians["best_total"] = min(t["total"] for t in timings)
        results[f"{name}/{faces}"] = medians
        width, height = RESOLUTIONS[name]
        cells = " | ".join(f"{medians[column]:.1f}" for column in columns)
        print(f"| {name} ({width}x{height}) | {faces} | {cells} |", flush=True)
    return results


def faces_of(engine: Engine, pixels: Image) -> list[Any]:
    return sorted(engine._detect(pixels), key=lambda f: float(f.bbox[0]))


def source_face(engine: Engine, inputs: Inputs) -> Any:
    pixels = decode_image(inputs.source).pixels
    face = max(engine._detect(pixels), key=lambda f: float((f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1])))
    engine._recognizer.get(pixels, face)
    return face


def paste_back(engine: Engine, inputs: Inputs, runs: int, max_faces: int = 4) -> dict[str, dict[str, float]]:
    """Per face: stock paste-back = median(get(paste_back=True)) - median(get(paste_back=False)), against
    `paste_face` timed alone on the crop and matrix of that same face (the first `max_faces` of each image),
    averaged over the faces."""
    swapper = engine._swapper
    src = source_face(engine, inputs)
    results: dict[str, dict[str, float]] = {}
    print("| target | faces (side) | stock paste-back per face, ms | ours per face, ms | speed-up |")
    print("|---|---|---:|---:|---:|")
    for (name, count), pixels in inputs.pixels.items():
        stock, ours = [], []
        for face in faces_of(engine, pixels)[:max_faces]:
            with_paste, without = [], []
            for i in range(runs + 1):  # alternating, so that both see the same load
                started = time.perf_counter()
                swapper.get(pixels, face, src, paste_back=True)
                middle = time.perf_counter()
                swapper.get(pixels, face, src, paste_back=False)
                if i:
                    with_paste.append(middle - started)
                    without.append(time.perf_counter() - middle)
            stock.append((statistics.median(with_paste) - statistics.median(without)) * 1000)
            crop, matrix = swapper.get(pixels, face, src, paste_back=False)
            frame = pixels.copy()
            ours.append(median_ms(lambda c=crop, m=matrix, fr=frame: paste_face(fr, c, m), max(runs, 5) * 3))
        stock_ms, ours_ms = statistics.mean(stock), statistics.mean(ours)
        side = round((0.30 if count == 1 else 0.15) * RESOLUTIONS[name][1])
        results[f"{name}/{count}"] = {"stock_ms": stock_ms, "ours_ms": ours_ms, "speedup": stock_ms / ours_ms}
        print(
            f"| {name} | {count} ({side} px) | {stock_ms:.1f} | {ours_ms:.2f} | {stock_ms / ours_ms:.0f}x |",
            flush=True,
        )
    return results


def model_runs(engine: Engine, inputs: Inputs, runs: int) -> dict[str, float]:
    """Each model's `session.run` alone, on the inputs the pipeline gives it (median ms)."""
    from insightface.utils import face_align

    pixels = inputs.pixels[("1080p", 1)]
    face = faces_of(engine, pixels)[0]
    src = source_face(engine, inputs)

    swapper = engine._swapper
    aligned, _ = face_align.norm_crop2(pixels, face.kps, swapper.input_size[0])
    blob = cv2.dnn.blobFromImage(aligned, 1.0 / swapper.input_std, swapper.input_size, (0.0, 0.0, 0.0), swapRB=True)
    latent = (src.normed_embedding.reshape((1, -1)) @ swapper.emap).astype(np.float32)
    latent /= np.linalg.norm(latent)
    feeds = {swapper.input_names[0]: blob, swapper.input_names[1]: latent}
    swap_ms = median_ms(lambda: swapper.session.run(swapper.output_names, feeds), runs)

    recognizer = engine._recognizer
    crop = face_align.norm_crop(pixels, landmark=face.kps, image_size=recognizer.input_size[0])
    rblob = cv2.dnn.blobFromImages(
        [crop], 1.0 / recognizer.input_std, recognizer.input_size, (recognizer.input_mean,) * 3, swapRB=True
    ).astype(np.float32)
    recognise_ms = median_ms(
        lambda: recognizer.session.run(recognizer.output_names, {recognizer.input_name: rblob}), runs
    )

    detector = engine._detector
    size = engine.config.det_size
    session = detector.resolution_sessions[(size, size)]
    letterboxed = np.zeros((size, size, 3), dtype=np.uint8)  # what SCRFD.detect feeds it: resized, padded
    letterboxed[: size * pixels.shape[0] // pixels.shape[1]] = cv2.resize(
        pixels, (size, size * pixels.shape[0] // pixels.shape[1])
    )
    dblob = cv2.dnn.blobFromImage(
        letterboxed,
        1.0 / detector.input_std,
        (size, size),
        (detector.input_mean,) * 3,
        swapRB=True,
    ).astype(np.float32)
    detect_ms = median_ms(lambda: session.run(detector.output_names, {detector.input_name: dblob}), runs)

    results = {"swapper_run_ms": swap_ms, "recognizer_run_ms": recognise_ms, "detector_run_ms": detect_ms}
    print("| model (demo) | session.run, ms |")
    print("|---|---:|")
    print(f"| swapper (1x3x128x128 + 1x512) | {swap_ms:.2f} |")
    print(f"| recogniser (1x3x112x112) | {recognise_ms:.2f} |")
    print(f"| detector (1x3x{size}x{size}) | {detect_ms:.2f} |", flush=True)
    return results


def per_face(engine: Engine, inputs: Inputs, swapper_run_ms: float, runs: int) -> dict[str, float]:
    """Time per face at 1080p beyond model compute, two ways, on the 4-face image (faces of 15 % of the height):

    A: the engine's own swap + paste stage times with faces="all" (median of the runs), divided by 4, minus the
       swapper's
       `session.run` alone (with faces="all" no per-target embedding is computed; the swap stage is alignment,
       blob, latent, `session.run` and the crop's conversion back; paste is `paste_face`);
    B: (total with faces="all" - total with faces="index:0") / 3 on the same image, in alternating pairs (median
       of the pairs' differences), minus the swapper's `session.run`: everything an extra face costs end to end,
       with decoding, detection and encoding identical on both sides. A difference of two ~100 ms totals is
       noisy on a shared machine, so B' takes it from each side's best (minimum) total as well."""
    data = inputs.targets[("1080p", 4)]
    pairs, stage_sums, totals_all, totals_one = [], [], [], []
    for i in range(runs + 1):
        everything = engine.swap(inputs.source, data, faces="all", output_format="jpeg", quality=JPEG_QUALITY)
        one = engine.swap(inputs.source, data, faces="index:0", output_format="jpeg", quality=JPEG_QUALITY)
        if i:
            pairs.append((everything.timings_ms["total"] - one.timings_ms["total"]) / 3)
            stage_sums.append(everything.timings_ms["swap"] + everything.timings_ms["paste"])
            totals_all.append(everything.timings_ms["total"])
            totals_one.append(one.timings_ms["total"])
    marginal = statistics.median(pairs)
    best_marginal = (min(totals_all) - min(totals_one)) / 3
    stage_per_face = statistics.median(stage_sums) / 4
    results = {
        "marginal_total_per_face_ms": marginal,
        "marginal_beyond_model_ms": marginal - swapper_run_ms,
        "best_marginal_total_per_face_ms": best_marginal,
        "best_marginal_beyond_model_ms": best_marginal - swapper_run_ms,
        "swap_paste_per_face_ms": stage_per_face,
        "swap_paste_beyond_model_ms": stage_per_face - swapper_run_ms,
        "swapper_run_ms": swapper_run_ms,
    }
    print("| method (1080p, faces of 162 px) | per face, ms | minus swapper session.run | target |")
    print("|---|---:|---:|---:|")
    print(
        f"| A: (swap + paste stages, 4 faces) / 4 | {stage_per_face:.1f} | "
        f"{stage_per_face - swapper_run_ms:.1f} | <= {TARGET_PER_FACE_MS:.0f} |"
    )
    print(
        f"| B: (total `all` - total `index:0`) / 3, same 4-face image, median of pairs | {marginal:.1f} | "
        f"{marginal - swapper_run_ms:.1f} | <= {TARGET_PER_FACE_MS:.0f} |"
    )
    print(
        f"| B': the same from the best (minimum) totals of each side | {best_marginal:.1f} | "
        f"{best_marginal - swapper_run_ms:.1f} | <= {TARGET_PER_FACE_MS:.0f} |",
        flush=True,
    )
    return results


def _swap_repeatedly(
    engine: Engine, source: bytes, target: bytes, count: int, barrier: threading.Barrier, latencies: list[float]
) -> None:
    barrier.wait()
    for _ in range(count):
        started = time.perf_counter()
        engine.swap(source, target, faces="all", output_format="jpeg", quality=JPEG_QUALITY)
        latencies.append((time.perf_counter() - started) * 1000)  # list.append is atomic


def _one_round(engine: Engine, inputs: Inputs, threads: int, images: int) -> tuple[float, list[float]]:
    """(images per second, latencies) of `images` swaps spread over `threads` threads."""
    data = inputs.targets[("1080p", 1)]
    per_thread = max(1, images // threads)
    barrier = threading.Barrier(threads + 1)
    latencies: list[float] = []
    with ThreadPoolExecutor(threads) as pool:
        futures = [
            pool.submit(_swap_repeatedly, engine, inputs.source, data, per_thread, barrier, latencies)
            for _ in range(threads)
        ]
        barrier.wait()
        started = time.perf_counter()
        for future in futures:
            future.result()  # re-raises a worker's exception
        wall = time.perf_counter() - started
    return per_thread * threads / wall, latencies


def throughput(engine: Engine, inputs: Inputs, images: int, rounds: int) -> dict[str, dict[str, float]]:
    """Images per second end to end (1080p, 1 face, JPEG out) with N threads sharing the one Engine; the thread
    counts take turns for `rounds` rounds (median and best of the rounds)."""
    per_round: dict[int, list[float]] = {threads: [] for threads in THREADS}
    latencies: dict[int, list[float]] = {threads: [] for threads in THREADS}
    for _ in range(rounds):
        for threads in THREADS:
            rate, times = _one_round(engine, inputs, threads, images)
            per_round[threads].append(rate)
            latencies[threads].extend(times)
    results = {}
    print(f"| threads | images/s, median of {rounds} rounds | best round | median latency, ms |")
    print("|---:|---:|---:|---:|")
    for threads in THREADS:
        rate, best = statistics.median(per_round[threads]), max(per_round[threads])
        latency = statistics.median(latencies[threads])
        results[str(threads)] = {"images_per_s": rate, "best_images_per_s": best, "median_latency_ms": latency}
        print(f"| {threads} | {rate:.2f} | {best:.2f} | {latency:.0f} |", flush=True)
    return results


def rss_probe(directory: Path, mode: str) -> None:
    """In a fresh process (`--rss-probe DIR --probe-mode engine|stock`, DIR holding models/, source.jpg and
    target.jpg): the peak RSS (VmHWM) after each phase, printed as one JSON object. Peaks only grow, so each figure
    covers the phases before it; hence one process for our engine, one for the stock baseline."""
    peaks = {"imports": peak_rss_mib()}
    engine = Engine.load(EngineConfig(models_dir=directory / "models", provider=ProviderChoice.cpu))
    peaks["loaded"] = peak_rss_mib()
    source, target = (directory / "source.jpg").read_bytes(), (directory / "target.jpg").read_bytes()
    if mode == "stock":
        pixels = decode_image(target).pixels
        src = source_face(engine, Inputs(source=source, targets={}, pixels={}))
        for face in faces_of(engine, pixels):
            engine._swapper.get(pixels, face, src, paste_back=True)
        peaks["stock_paste_back"] = peak_rss_mib()
    else:
        for _ in range(3):
            engine.swap(source, target, faces="all", output_format="jpeg", quality=JPEG_QUALITY)
        peaks["one_thread"] = peak_rss_mib()
        with ThreadPoolExecutor(4) as pool:
            list(
                pool.map(
                    lambda _: engine.swap(source, target, faces="all", output_format="jpeg", quality=JPEG_QUALITY),
                    range(8),
                )
            )
        peaks["four_threads"] = peak_rss_mib()
    print(json.dumps(peaks))


def measure_rss(inputs: Inputs, work: Path) -> dict[str, float]:
    """`rss_probe` in two subprocesses, on `work` (which holds the demo models in models/)."""
    import subprocess

    (work / "source.jpg").write_bytes(inputs.source)
    (work / "target.jpg").write_bytes(inputs.targets[("4K", 4)])
    peaks: dict[str, float] = {}
    for mode in ("engine", "stock"):
        done = subprocess.run(
            [sys.executable, __file__, "--rss-probe", str(work), "--probe-mode", mode],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        found = json.loads(done.stdout.strip().splitlines()[-1])
        peaks.update({key if key not in ("imports", "loaded") else f"{key}_{mode}": v for key, v in found.items()})
    print("| a fresh process; 4K target (3840x2160), 4 faces, JPEG | peak RSS, MiB |")
    print("|---|---:|")
    print(f"| imports (cv2, numpy, insightface, the engine) | {peaks['imports_engine']:.0f} |")
    print(f"| Engine.load (demo models) | {peaks['loaded_engine']:.0f} |")
    print(f"| + 3 swaps, one at a time | {peaks['one_thread']:.0f} |")
    print(f"| + 8 swaps on 4 threads sharing the Engine | {peaks['four_threads']:.0f} |")
    stock = peaks["stock_paste_back"]
    print(f"| baseline: Engine.load, then insightface's stock paste_back=True on each face in turn | {stock:.0f} |")
    return peaks


# --- main ----------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer runs (under a minute)")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per figure (default 9, quick 3)")
    parser.add_argument("--json", type=Path, default=HERE / "out" / "engine.json")
    parser.add_argument("--rss-probe", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--probe-mode", choices=("engine", "stock"), default="engine", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_probe is not None:
        rss_probe(args.rss_probe, args.probe_mode)
        return
    runs = args.runs or (3 if args.quick else 9)
    limit = 60 if args.quick else 300
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
    print("## Engine benchmark (CPU, demo models)\n")
    print(f"- CPU: {env['cpu']}, {env['cores']} cores; {platform.system()} {platform.machine()}")
    print("- " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    print(f"- load average at start: {env['load_average_start']:.2f}; {runs} timed runs per figure (median)")

    with tempfile.TemporaryDirectory(prefix="facemint-bench-engine-") as tmp:
        models = Path(tmp) / "models"
        write_demo_models(models)
        rss_before = current_rss_mib()
        t0 = time.perf_counter()
        engine = Engine.load(EngineConfig(models_dir=models, provider=ProviderChoice.cpu))
        load_s = time.perf_counter() - t0
        rss_loaded = current_rss_mib()
        print(f"- Engine.load: {load_s * 1000:.0f} ms on {', '.join(engine.providers)} ({engine.model_set} models)")
        inputs = make_inputs()
        results: dict[str, Any] = {"environment": env, "load_ms": load_s * 1000}

        with section("Per-stage times, ms (median; faces=all, JPEG in and out, quality 90)"):
            results["stages"] = stage_times(engine, inputs, runs)
        with section("Paste-back per face: insightface's stock paste_back=True vs inference.paste.paste_face"):
            results["paste_back"] = paste_back(engine, inputs, runs, max_faces=2 if args.quick else 4)
        with section("Model compute alone (demo models)"):
            results["models"] = model_runs(engine, inputs, max(runs, 5) * 3)
        with section("Time per face beyond model compute, 1080p"):
            results["per_face"] = per_face(engine, inputs, results["models"]["swapper_run_ms"], max(runs, 5) * 2)
        with section("Throughput, 1080p, 1 face, threads sharing one Engine"):
            results["throughput"] = throughput(engine, inputs, 8 if args.quick else 16, 1 if args.quick else 3)
        with section("Peak RSS"):
            probe = measure_rss(inputs, Path(tmp))

    results["rss_mib"] = {
        "bench_before_load": rss_before,
        "bench_after_load": rss_loaded,
        "bench_peak": peak_rss_mib(),
        "probe": probe,
    }
    results["load_average_end"] = round(os.getloadavg()[0], 2)
    summary(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"\n{time.perf_counter() - started:.0f} s in all; JSON in {args.json}")


def summary(results: dict[str, Any]) -> None:
    probe = results["rss_mib"]["probe"]
    print("\n### Summary against the targets\n")
    print(
        f"- peak RSS (fresh process, 4K, 4 faces): {probe['loaded_engine']:.0f} MiB once loaded, "
        f"{probe['one_thread']:.0f} MiB swapping one at a time, {probe['four_threads']:.0f} MiB with 4 threads; "
        f"the stock paste-back alone, one face at a time: {probe['stock_paste_back']:.0f} MiB"
    )
    for name, target in TARGET_PASTE_SPEEDUP.items():
        speedups = [v["speedup"] for k, v in results["paste_back"].items() if k.startswith(f"{name}/")]
        worst = min(speedups)
        verdict = "met" if worst >= target else "NOT met"
        print(f"- paste-back at {name}: {worst:.0f}x faster than stock at worst (target {target:.0f}x): {verdict}")
    per_face = results["per_face"]
    figures = [per_face[k] for k in ("swap_paste_beyond_model_ms", "marginal_beyond_model_ms")]
    figures.append(per_face["best_marginal_beyond_model_ms"])
    verdict = "met" if max(figures) <= TARGET_PER_FACE_MS else "NOT met"
    print(
        "- time per face beyond model compute at 1080p: "
        + ", ".join(f"{value:.1f} ms ({label})" for value, label in zip(figures, ("A", "B", "B'"), strict=True))
        + f" (target <= {TARGET_PER_FACE_MS:.0f} ms): {verdict}"
    )
    tput = results["throughput"]
    print(
        "- 1080p images/s with 1/2/4 threads: "
        + " / ".join(f"{tput[str(t)]['images_per_s']:.2f}" for t in THREADS)
        + " (best rounds: "
        + " / ".join(f"{tput[str(t)]['best_images_per_s']:.2f}" for t in THREADS)
        + ")"
    )
    print(f"- load average at the end: {results['load_average_end']:.2f}")


if __name__ == "__main__":
    try:
        main()
    except TimeLimit as exc:
        sys.exit(str(exc))
