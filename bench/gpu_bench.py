"""Stand-in models on one GPU through ONNX Runtime's CUDA (or TensorRT) provider: images per second at 1080p with
one face, video frames per second at 1080p, each model's compute alone (with and without IO binding), GPU memory,
and what bounds each figure (GPU busy % against the process's CPU). Issue 11's goal: at least 100 images/s on one
H100-class GPU.

Run by bench/gpu.sh on the device machine (read its header first), with the repository root on PYTHONPATH:

    python3 bench/gpu_bench.py --out $OUT --provider cuda        # about 4 minutes, bounded at 7
    python3 bench/gpu_bench.py --out $OUT --provider tensorrt    # the same through TensorRT (engines built first)

and here, to check the code on the CPU in a few seconds (demo models, small windows):

    .venv/bin/python bench/gpu_bench.py --out /tmp/gpu-smoke --provider cpu --smoke

It imports only what the device's image has (numpy, onnx, onnxruntime, opencv, scikit-image, psutil, nvidia-ml-py)
plus the carried wheels (onnxruntime-gpu, insightface, av). A wrong setup fails loudly: a GPU provider that is
listed but does not load for every model stops the run (`inference.providers.check_sessions`), never a silent
fallback to the CPU. A provider that this onnxruntime does not list at all is a finding, not a failure: it is
reported ("CUDA provider unavailable: ...") and the script exits 0.

Everything lands in --out: gpu_bench_<provider>.json (written after each section, so a time-out keeps what was
measured) and the markdown it prints."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from engine import jpeg, source_image, target_image
from engine_standin import model_sessions, random_feeds

from inference.engine import Engine, EngineConfig
from inference.errors import ProviderUnavailable
from inference.models import standin_counts, write_demo_models, write_standin_models
from inference.providers import CUDA, TENSORRT, ProviderChoice, available_providers, installed_runtimes
from inference.video import Trim

HERE = Path(__file__).resolve().parent

GOAL_IMAGES_PER_S = 100.0
PROVIDER_NAMES = {"cuda": CUDA, "tensorrt": TENSORRT, "cpu": "CPUExecutionProvider"}
REPORT: list[str] = []


class TimeLimit(Exception):
    pass


def _raise_limit(signum: int, frame: object) -> None:
    raise TimeLimit(f"gpu_bench ran past its time limit (signal {signum})")


def emit(line: str = "") -> None:
    print(line, flush=True)
    REPORT.append(line)


# --- the device --------------------------------------------------------------------------------------------------


class GpuMeter:
    """Samples GPU utilisation and memory (NVML, else nvidia-smi) and this process's CPU time over a window."""

    def __init__(self, *, enabled: bool = True, interval: float = 0.1) -> None:
        self.enabled = enabled
        self.interval = interval
        self.samples: list[tuple[float, float]] = []  # (busy %, memory used MiB)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml: Any = None
        self._handle: Any = None
        with contextlib.suppress(Exception):
            if not enabled:
                return
            import pynvml

            pynvml.nvmlInit()
            self._nvml, self._handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)

    @property
    def available(self) -> bool:
        return self.enabled and (self._nvml is not None or shutil.which("nvidia-smi") is not None)

    def read(self) -> tuple[float, float] | None:
        """(busy %, memory used MiB) of GPU 0, or None when there is no GPU to read."""
        if not self.available:
            return None
        if self._nvml is not None:
            busy = self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
            used = self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / (1 << 20)
            return float(busy), float(used)
        try:
            text = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout
            busy, used = (float(v) for v in text.splitlines()[0].split(","))
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return None
        return busy, used

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            sample = self.read()
            if sample is not None:
                self.samples.append(sample)

    @contextlib.contextmanager
    def window(self) -> Iterator[dict[str, float]]:
        """Measure the block: fills the dict with gpu_busy_pct (mean), gpu_mem_peak_mib, cpu_pct (this process, all
        threads; 100 = one core) and cpu_cores."""
        figures: dict[str, float] = {}
        self.samples = []
        self._stop.clear()
        if self.available:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            yield figures
        finally:
            elapsed = time.perf_counter() - wall
            figures["cpu_pct"] = 100 * (time.process_time() - cpu) / elapsed if elapsed else 0.0
            figures["cpu_cores"] = float(os.cpu_count() or 1)
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            if self.samples:
                figures["gpu_busy_pct"] = statistics.mean(s[0] for s in self.samples)
                figures["gpu_mem_peak_mib"] = max(s[1] for s in self.samples)


def bound(figures: dict[str, float]) -> str:
    """What bounds a throughput figure, from the GPU's busy time and the process's CPU."""
    busy = figures.get("gpu_busy_pct")
    cpu = figures.get("cpu_pct", 0.0)
    cores = figures.get("cpu_cores", 1.0)
    if busy is None:
        return f"CPU only ({cpu / 100:.1f} of {cores:.0f} cores busy)"
    if busy >= 85:
        return f"GPU-bound (busy {busy:.0f} %)"
    if cpu >= 0.8 * 100 * cores:
        return f"CPU-bound: {cpu / 100:.1f} of {cores:.0f} cores busy, GPU busy {busy:.0f} %"
    return (
        f"host-bound: GPU busy {busy:.0f} %, the process used {cpu / 100:.1f} of {cores:.0f} cores (Python under "
        "the GIL and serial host work between kernels; see the stage times)"
    )


def device_info() -> dict[str, Any]:
    import onnxruntime

    info: dict[str, Any] = {
        "host": platform.node(),
        "python": platform.python_version(),
        "cpu_cores": os.cpu_count(),
        "load_average": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_file": onnxruntime.__file__,
        "onnxruntime_device": onnxruntime.get_device(),
        "available_providers": available_providers(),
        "installed_runtimes": installed_runtimes(),
    }
    if shutil.which("nvidia-smi"):
        query = "name,driver_version,memory.total,memory.used,utilization.gpu,clocks.max.sm"
        done = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        )
        info["nvidia_smi"] = done.stdout.strip() or done.stderr.strip()
    return info


def preload_cuda() -> str:
    """Load the CUDA and cuDNN libraries onnxruntime-gpu needs (from LD_LIBRARY_PATH, which gpu.sh points at the
    image's nvidia-* packages), so that a missing one is named here rather than as a silent CPU fallback."""
    import onnxruntime

    preload = getattr(onnxruntime, "preload_dlls", None)
    if preload is None:
        return "onnxruntime has no preload_dlls"
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):  # it prints what failed to load
        preload()
    return captured.getvalue().strip() or "ok"


# --- the measurements ------------------------------------------------------------------------------------------


def median_ms(fn: Callable[[], object], runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def model_table(engine: Engine, device: str, runs: int) -> dict[str, Any]:
    """Each model's run alone: session.run with numpy in and out (the engine's way: insightface calls it so), and
    with IO binding (inputs already on the device, outputs left there); the recogniser, whose batch is dynamic,
    also at batch 8 and 32. The other graphs fix their batch at 1."""
    import onnxruntime

    size = engine.config.det_size
    emit("| model | input | GMACs | session.run, ms | IO binding, ms | TFLOP/s (IO binding) |")
    emit("|---|---|---:|---:|---:|---:|")
    results: dict[str, Any] = {}
    for role, session in model_sessions(engine).items():
        # The multiply-accumulates of the stand-ins (the real models'); the demo models' (--smoke) are not counted.
        gmacs = standin_counts(role, det_size=(size, size)).flops / 1e9 if engine.model_set == "standin" else 0.0
        batches = (1, 8, 32) if role == "recognizer" else (1,)
        for batch in batches:
            feeds = random_feeds(session, size)
            if batch > 1:
                feeds = {k: np.repeat(v, batch, axis=0) for k, v in feeds.items()}
            plain = median_ms(lambda s=session, f=feeds: s.run(None, f), runs)
            binding = session.io_binding()
            kept = []  # the device copies must outlive the binding
            for name, array in feeds.items():
                value = onnxruntime.OrtValue.ortvalue_from_numpy(array, device, 0)
                kept.append(value)
                binding.bind_ortvalue_input(name, value)
            for output in session.get_outputs():
                binding.bind_output(output.name, device)
            bound_ms = median_ms(lambda s=session, b=binding: s.run_with_iobinding(b), runs)
            total = gmacs * batch
            rate = 2 * total / (bound_ms / 1000) / 1e3  # TFLOP/s: two operations per multiply-accumulate
            shapes = " + ".join("x".join(str(d) for d in f.shape) for f in feeds.values())
            results[f"{role}/{batch}"] = {"gmacs": total, "run_ms": plain, "iobinding_ms": bound_ms, "tflops": rate}
            emit(f"| {role} | {shapes} | {total:.1f} | {plain:.2f} | {bound_ms:.2f} | {rate:.1f} |")
    per_image = 2 * results["detector/1"]["iobinding_ms"] + results["recognizer/1"]["iobinding_ms"]
    per_image += results["swapper/1"]["iobinding_ms"]
    results["models_per_image_ms"] = per_image
    emit(
        f"\nModels alone per image (detector twice: target and source; recogniser once; swapper once): "
        f"{per_image:.2f} ms, at most {1000 / per_image:.0f} images/s if the GPU ran one model at a time"
    )
    return results


def _swap_loop(engine: Engine, source: bytes, target: bytes, processors: str, deadline: float, out: list) -> None:
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        result = engine.swap(source, target, output_format="jpeg", quality=90, processors=processors)
        out.append(((time.perf_counter() - started) * 1000, result.timings_ms))


def image_throughput(
    engine: Engine, meter: GpuMeter, threads: list[int], seconds: float, processors: str
) -> dict[str, Any]:
    """Images per second at 1080p, one face, JPEG in and out, `threads` threads sharing the engine for `seconds`
    each (after one swap per thread to warm up); the median stage times and what bounds the figure."""
    source = jpeg(source_image())
    target = jpeg(target_image(1920, 1080, faces=1, seed=30))
    stages = ("decode", "detect", "embed", "swap", "paste", "enhance", "encode")
    emit(f"| threads | images/s | median latency, ms | {' | '.join(stages)} | GPU busy | CPU cores | bound |")
    emit("|---:|---:|---:|" + "---:|" * len(stages) + "---:|---:|---|")
    results: dict[str, Any] = {}
    for count in threads:
        with ThreadPoolExecutor(count) as pool:
            list(
                pool.map(
                    lambda _: engine.swap(source, target, output_format="jpeg", processors=processors), range(count)
                )
            )
            samples: list[tuple[float, dict[str, float]]] = []
            with meter.window() as figures:
                started = time.perf_counter()
                deadline = started + seconds
                futures = [
                    pool.submit(_swap_loop, engine, source, target, processors, deadline, samples) for _ in range(count)
                ]
                for future in futures:
                    future.result()
                wall = time.perf_counter() - started
        rate = len(samples) / wall
        medians = {s: statistics.median(t.get(s, 0.0) for _, t in samples) for s in stages}
        latency = statistics.median(ms for ms, _ in samples)
        verdict = bound(figures)
        results[str(count)] = {"images_per_s": rate, "latency_ms": latency, "stages_ms": medians, **figures}
        results[str(count)]["bound"] = verdict
        cells = " | ".join(f"{medians[s]:.1f}" for s in stages)
        busy = f"{figures['gpu_busy_pct']:.0f} %" if "gpu_busy_pct" in figures else "-"
        emit(
            f"| {count} | {rate:.1f} | {latency:.0f} | {cells} | {busy} | {figures['cpu_pct'] / 100:.1f} | {verdict} |"
        )
    return results


def video_throughput(
    engine: Engine, meter: GpuMeter, clip: Path, settings: list[tuple[int, int]], seconds: float
) -> dict[str, Any]:
    """Engine.swap_video's frames per second on the clip's first `seconds`, for (threads, batch_frames) pairs."""
    source = jpeg(source_image())
    emit("| threads | batch | frames | frames/s | GPU busy | GPU memory peak, MiB | CPU cores | bound |")
    emit("|---:|---:|---:|---:|---:|---:|---:|---|")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="facemint-gpu-video-") as tmp:
        for threads, batch in settings:
            output = Path(tmp) / f"out-{threads}-{batch}.mp4"
            with meter.window() as figures:
                started = time.perf_counter()
                result = engine.swap_video(
                    source, clip, output, trim=Trim(0.0, seconds), threads=threads, batch_frames=batch
                )
                wall = time.perf_counter() - started
            rate = result.frames_done / wall
            verdict = bound(figures)
            results[f"{threads}x{batch}"] = {
                "frames": result.frames_done,
                "fps": rate,
                "timings_ms": result.timings_ms,
                **figures,
                "bound": verdict,
            }
            busy = f"{figures['gpu_busy_pct']:.0f} %" if "gpu_busy_pct" in figures else "-"
            memory = f"{figures['gpu_mem_peak_mib']:.0f}" if "gpu_mem_peak_mib" in figures else "-"
            emit(
                f"| {threads} | {batch} | {result.frames_done} | {rate:.1f} | {busy} | {memory} | "
                f"{figures['cpu_pct'] / 100:.1f} | {verdict} |"
            )
    return results


# --- main ------------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON (and gpu.sh's log)")
    parser.add_argument("--provider", choices=sorted(PROVIDER_NAMES), default="cuda")
    parser.add_argument("--models", type=Path, default=None, help="stand-in models (default: written to a temp dir)")
    parser.add_argument("--seconds", type=float, default=8.0, help="each image-throughput window")
    parser.add_argument("--video-seconds", type=float, default=4.0, help="seconds of the 1080p clip per video run")
    parser.add_argument("--threads", default="1,4,8,16", help="thread counts for images/s")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per model in the model table")
    parser.add_argument("--time-limit", type=int, default=420)
    parser.add_argument("--smoke", action="store_true", help="demo models, 640x360 video, 1 s windows (a code check)")
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, _raise_limit)
    signal.alarm(args.time_limit)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"gpu_bench_{args.provider}.json"
    results: dict[str, Any] = {"provider": args.provider, "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    def save() -> None:
        json_path.write_text(json.dumps(results, indent=2, default=str))

    print(f"## GPU benchmark: stand-in models on {args.provider}\n")
    wanted = PROVIDER_NAMES[args.provider]
    if args.provider != "cpu":
        results["preload"] = preload_cuda()
    results["device"] = device_info()
    for key, value in results["device"].items():
        emit(f"- {key}: {value}")
    if args.provider != "cpu":
        emit(f"- CUDA/cuDNN preload: {results['preload']}")
    save()
    if wanted not in results["device"]["available_providers"]:
        finding = (
            f"{args.provider.upper() if args.provider == 'cuda' else 'TensorRT'} provider unavailable: this "
            f"onnxruntime ({results['device']['onnxruntime']}, {results['device']['onnxruntime_file']}) lists "
            f"{', '.join(results['device']['available_providers'])}; onnxruntime-gpu was not installed (see "
            "bench/gpu.sh's header for the wheels to carry)"
        )
        results["finding"] = finding
        save()
        emit(f"\n**{finding}**")
        return 0
    if args.provider == "tensorrt":
        import ctypes

        with contextlib.suppress(OSError):
            ctypes.CDLL("libnvinfer.so.10")
            results["tensorrt_library"] = "libnvinfer.so.10 loaded"
        if "tensorrt_library" not in results:
            finding = "TensorRT provider unavailable: libnvinfer.so.10 is not on this machine (TensorRT not carried)"
            results["finding"] = finding
            save()
            emit(f"\n**{finding}**")
            return 0

    with tempfile.TemporaryDirectory(prefix="facemint-gpu-bench-") as tmp:
        models_dir = args.models
        if models_dir is None:
            models_dir = Path(tmp) / "models"
            clock = time.perf_counter()
            (write_demo_models if args.smoke else write_standin_models)(models_dir)
            results["models_written_s"] = time.perf_counter() - clock
        choice = ProviderChoice(args.provider)
        clock = time.perf_counter()
        try:
            engine = Engine.load(
                EngineConfig(models_dir=models_dir, provider=choice, cache_dir=Path(tmp) / "trt-cache")
            )
        except ProviderUnavailable as exc:  # listed but not loaded: a wrong setup, never a silent CPU fallback
            results["error"] = f"{type(exc).__name__}: {exc}"
            save()
            print(f"\nWRONG SETUP: {exc}", file=sys.stderr)
            return 3
        results["load_s"] = time.perf_counter() - clock
        results["providers"] = engine.providers
        emit(
            f"- Engine.load: {results['load_s']:.1f} s, {engine.model_set} models ({', '.join(engine.processors)}) "
            f"on {', '.join(engine.providers)}"
        )
        # Whether cuDNN may use TF32 tensor cores for float32 convolutions (use_tf32) decides much of the figure.
        options = engine._swapper.session.get_provider_options().get(wanted, {})
        results["provider_options"] = options
        keys = ("use_tf32", "cudnn_conv_algo_search", "cudnn_conv_use_max_workspace", "do_copy_in_default_stream")
        if options:
            emit("- " + wanted + " options: " + ", ".join(f"{k}={options[k]}" for k in keys if k in options))
        meter = GpuMeter(enabled=args.provider != "cpu" or args.smoke)
        idle = meter.read()
        results["gpu_memory_after_load_mib"] = idle[1] if idle else None
        emit(f"- GPU memory in use after loading: {idle[1]:.0f} MiB" if idle else "- GPU memory: no NVML/nvidia-smi")
        save()

        device = "cpu" if args.provider == "cpu" else "cuda"
        print("\n### Model compute alone")
        emit()
        results["models"] = model_table(engine, device, runs=5 if args.smoke else args.runs)
        save()

        threads = [int(t) for t in args.threads.split(",")]
        seconds = 1.0 if args.smoke else args.seconds
        for label, processors in (("off", "face_swapper"), ("on", "face_swapper,face_enhancer")):
            print(f"\n### Images per second, 1080p, one face, enhancer {label}\n")
            emit(f"\nImages/s at 1080p, one face, JPEG in and out, enhancer {label} ({seconds:g} s per row):\n")
            counts = threads if label == "off" else [t for t in threads if t in (1, max(threads))]
            results[f"images_enhancer_{label}"] = image_throughput(engine, meter, counts, seconds, processors)
            save()

        print("\n### Video frames per second, 1080p\n")
        from video import make_clip

        size = (640, 360) if args.smoke else (1920, 1080)
        clip = Path(tmp) / "clip.mp4"
        make_clip(clip, seconds=1.0 if args.smoke else args.video_seconds, width=size[0], height=size[1])
        emit(f"\nVideo at {size[0]}x{size[1]}, 30 fps, one face (Engine.swap_video, libx264 veryfast CRF 20):\n")
        settings = [(4, 8), (8, 8), (16, 16)] if not args.smoke else [(2, 8)]
        results["video"] = video_throughput(
            engine, meter, clip, settings, seconds=1.0 if args.smoke else args.video_seconds
        )
        save()

    best = max(v["images_per_s"] for v in results["images_enhancer_off"].values())
    verdict = "met" if best >= GOAL_IMAGES_PER_S else "NOT met"
    results["summary"] = {"best_images_per_s": best, "goal": GOAL_IMAGES_PER_S, "verdict": verdict}
    save()
    print("\n### Ready to paste (docs/benchmarks.md, Part 6)\n")
    print("```markdown")
    print("\n".join(REPORT))
    print(
        f"\nBest: {best:.1f} images/s at 1080p with one face on {args.provider} (goal >= {GOAL_IMAGES_PER_S:.0f}: "
        f"{verdict})"
    )
    print("```")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except TimeLimit as exc:
        sys.exit(str(exc))
