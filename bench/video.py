"""Video swaps on the CPU: `Engine.swap_video`'s frames per second end to end, each stage's share and peak memory,
against a plain sequential frame loop over the same engine, on demo models and on stand-in models.

    .venv/bin/python bench/video.py            # 10 s and 60 s 1080p clips (about 7 minutes on 2 cores, bounded at 15)
    .venv/bin/python bench/video.py --quick    # 3 s and 12 s clips, no stand-ins (1-1.5 minutes, bounded at 2)
    .venv/bin/python bench/video.py --standin-frames 0    # demo models only

The clips are generated once and cached in $TMPDIR/facemint-bench-video/: 1920x1080, 30 fps, H.264 (CRF 18) with
an AAC tone, one demo face (`draw_demo_face`, 30 % of the height) moving slightly on a dark, noisy background that
drifts a few pixels like a hand-held camera (about 3 Mbit/s); the long clip is the short one looped (its packets
copied, not re-encoded).

Every job runs in its own child process (`--job`), so that its peak memory is its own: the child reports its
VmHWM (peak RSS) after loading the engine and after the job, and the parent reads `ru_maxrss` from `wait4` too
(which can carry this process's RSS over fork and exec, so VmHWM is the figure compared). The jobs:

* pipeline: `Engine.swap_video` as the worker calls it (decoder thread, a pool of min(4, CPUs) threads working on
  batches of 8 frames, encoder thread; libx264 `veryfast` CRF 20, audio copied);
* plain: the same engine's per-frame step (what swap_video hands its pool: detect, choose, swap, paste) in one
  loop, one frame at a time: decode a frame with PyAV, run the step, encode it, mux it (audio copied too), with
  the same codec settings (FFmpeg's decoder threads and x264's own threads as the pipeline has them) and the same
  colour conversions (`inference.video_color`). The ratio therefore measures the pipeline's structure:
  overlapping decode, work and encode, and the work pool.

Demo models compute almost nothing, so those figures are the pipeline's own cost; the stand-ins (real
architectures, random weights: `write_standin_models`) cost what the real models cost, and on this CPU a frame
takes seconds, so their run is bounded to `--standin-frames` frames (a trim for swap_video, the first frames for
the loop), both in one child process (one 30 s model load).

Targets (issue 11): pipeline >= 1.5x the plain loop's frames per second on demo models; peak RSS of the long clip
within 10 % of the short clip's. Prints markdown tables, a summary against the targets and a block ready to paste
into docs/benchmarks.md; JSON lands in bench/out/video.json (git-ignored). The machine may be shared: the load
average is printed with the figures."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from engine import background, cpu_model, jpeg, peak_rss_mib, section, source_image, versions

from inference.engine import Engine, EngineConfig
from inference.models import draw_demo_face, write_demo_models, write_standin_models
from inference.providers import ProviderChoice
from inference.video import Trim
from inference.video_color import bgr_to_frame, frame_to_bgr, supported_colorspace
from inference.video_pipeline import ENCODER_PRESET

HERE = Path(__file__).resolve().parent
CACHE = Path(tempfile.gettempdir()) / "facemint-bench-video"
CLIP_VERSION = 2  # bump when the generated clips change
WIDTH, HEIGHT, FPS = 1920, 1080, 30
SHAKE = 6  # pixels the scene drifts each way
CRF = 20
TARGET_SPEEDUP = 1.5
TARGET_RSS_GROWTH = 0.10
STAGE_ORDER = ("probe", "prepare", "decode", "detect", "embed", "swap", "paste", "enhance", "encode")


REPORT: list[str] = []  # the tables and notes, printed again at the end as a block to paste


class TimeLimit(Exception):
    pass


def emit(line: str = "") -> None:
    """Print a line of the report and keep it for the block to paste."""
    print(line, flush=True)
    REPORT.append(line)


def _raise_limit(signum: int, frame: object) -> None:
    raise TimeLimit(f"the benchmark ran past its time limit (signal {signum})")


# --- clips ---------------------------------------------------------------------------------------------------


def face_position(index: int, width: int, height: int, fps: int) -> tuple[int, int, int]:
    """(x, y, side) of the face in frame `index`: 30 % of the height, drifting by up to 2 % of the width and
    height on a 2-second and a 3-second cycle."""
    side = round(0.30 * height)
    t = index / fps
    x = round(0.40 * width + 0.02 * width * math.sin(2 * math.pi * t / 2))
    y = round(0.30 * height + 0.02 * height * math.cos(2 * math.pi * t / 3))
    return x, y, side


def make_clip(path: Path, *, seconds: float, width: int = WIDTH, height: int = HEIGHT, fps: int = FPS) -> None:
    """Encode the short clip (see the module docstring) to `path`, through a temporary file."""
    frames = round(seconds * fps)
    scene = background(width + 2 * SHAKE, height + 2 * SHAKE, seed=100)
    partial = path.with_suffix(".part.mp4")
    rate, chunk = 48000, 1024
    with av.open(str(partial), "w", format="mp4") as output:
        video = output.add_stream("libx264", rate=fps, options={"crf": "18", "preset": "veryfast"})
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = output.add_stream("aac", rate=rate)
        audio.layout = "stereo"
        samples = 0
        for i in range(frames):
            # A hand-held camera: the noisy scene drifts by up to SHAKE pixels (x264 follows it with motion
            # vectors, as in real footage; noise that changed every frame would cost 50 Mbit/s).
            dx = round(SHAKE * (1 + math.sin(2 * math.pi * i / (1.3 * fps))))
            dy = round(SHAKE * (1 + math.cos(2 * math.pi * i / (1.7 * fps))))
            image = np.ascontiguousarray(scene[dy : dy + height, dx : dx + width])
            x, y, side = face_position(i, width, height, fps)
            draw_demo_face(image, x, y, side, identity=2)
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            output.mux(video.encode(frame))
            while samples < (i + 1) * rate // fps:  # a 440 Hz tone, interleaved with the video
                t = (np.arange(samples, samples + chunk) / rate).astype(np.float32)
                wave = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
                sound = av.AudioFrame.from_ndarray(np.stack([wave, wave]), format="fltp", layout="stereo")
                sound.sample_rate, sound.pts = rate, samples
                output.mux(audio.encode(sound))
                samples += chunk
        output.mux(video.encode(None))
        output.mux(audio.encode(None))
    partial.rename(path)


def loop_clip(short: Path, path: Path, times: int) -> None:
    """`short` played `times` times in a row, its packets copied with shifted timestamps (no re-encoding)."""
    partial = path.with_suffix(".part.mp4")
    with av.open(str(short)) as source:
        inputs = [source.streams.video[0], *source.streams.audio[:1]]
        spans: dict[int, tuple[int, int]] = {}  # stream index -> (first dts, dts span of one pass)
        for packet in source.demux(inputs):
            if packet.dts is None:
                continue
            first, _ = spans.get(packet.stream.index, (packet.dts, 0))
            spans[packet.stream.index] = (first, packet.dts + (packet.duration or 0) - first)
        with av.open(str(partial), "w", format="mp4") as output:
            outputs = {stream.index: output.add_stream_from_template(stream) for stream in inputs}
            for turn in range(times):
                source.seek(0)
                for packet in source.demux(inputs):
                    if packet.dts is None:
                        continue
                    index = packet.stream.index
                    shift = turn * spans[index][1]
                    packet.dts += shift
                    if packet.pts is not None:
                        packet.pts += shift
                    packet.stream = outputs[index]
                    output.mux(packet)
    partial.rename(path)


def clips(short_seconds: float, long_seconds: float, size: tuple[int, int]) -> tuple[Path, Path]:
    """The short and long clips, generated on first use and cached."""
    CACHE.mkdir(parents=True, exist_ok=True)
    width, height = size
    short = CACHE / f"v{CLIP_VERSION}-{width}x{height}-{FPS}fps-{short_seconds:g}s.mp4"
    if not short.exists():
        started = time.perf_counter()
        make_clip(short, seconds=short_seconds, width=width, height=height)
        print(f"- generated {short.name} in {time.perf_counter() - started:.1f} s", flush=True)
    times = max(1, round(long_seconds / short_seconds))
    long = CACHE / f"v{CLIP_VERSION}-{width}x{height}-{FPS}fps-{short_seconds:g}s-x{times}.mp4"
    if not long.exists():
        loop_clip(short, long, times)
    return short, long


def models(kind: str) -> Path:
    """Demo or stand-in models, written once into the cache."""
    directory = CACHE / f"models-{kind}"
    if not (directory / ".complete").exists():
        started = time.perf_counter()
        (write_demo_models if kind == "demo" else write_standin_models)(directory)
        (directory / ".complete").touch()
        print(f"- wrote the {kind} models in {time.perf_counter() - started:.1f} s", flush=True)
    return directory


# --- the jobs (in a child process) ---------------------------------------------------------------------------


def frame_step(engine: Engine, source: bytes, processors: str) -> Callable[[np.ndarray], Any]:
    """What swap_video hands its pool for each frame (detect, choose, swap, paste, enhance), with the source face
    and embedding computed once, as swap_video does."""
    return engine.frame_swapper(source, processors=processors)


def pipeline_job(engine: Engine, source: bytes, clip: Path, output: Path, frames: int, processors: str) -> dict:
    trim = Trim(0.0, frames / FPS) if frames else None
    started = time.perf_counter()
    result = engine.swap_video(source, clip, output, trim=trim, processors=processors, crf=CRF)
    wall = time.perf_counter() - started
    return {
        "frames": result.frames_done,
        "frames_swapped": result.frames_swapped,
        "wall_s": wall,
        "timings_ms": result.timings_ms,
        "audio": result.audio,
    }


def plain_job(engine: Engine, source: bytes, clip: Path, output: Path, frames: int, processors: str) -> dict:
    """One frame at a time: decode, the per-frame step, encode and mux; the audio packets muxed as the video's
    time passes them."""
    timings = {"prepare": 0.0, "decode": 0.0, "encode": 0.0}
    started = time.perf_counter()
    step = frame_step(engine, source, processors)
    timings["prepare"] = (time.perf_counter() - started) * 1000
    done = swapped = 0
    with av.open(str(clip)) as video_in, av.open(str(clip)) as audio_in:
        stream = video_in.streams.video[0]
        stream.thread_type = "AUTO"  # as the pipeline's decoder
        with av.open(str(output), "w", format="mp4", options={"movflags": "+faststart"}) as out:
            encoder = out.add_stream(
                "libx264", rate=stream.average_rate, options={"crf": str(CRF), "preset": ENCODER_PRESET}
            )
            encoder.width, encoder.height, encoder.pix_fmt = stream.width, stream.height, "yuv420p"
            encoder.codec_context.time_base = stream.time_base
            colorspace = supported_colorspace(stream.codec_context.colorspace)
            audio = _AudioCopy(audio_in, out)
            decoded = iter(video_in.decode(stream))
            while not frames or done < frames:
                clock = time.perf_counter()
                frame = next(decoded, None)
                if frame is None:
                    break
                pixels = frame_to_bgr(frame)
                work_started = time.perf_counter()
                timings["decode"] += (work_started - clock) * 1000
                report = step(pixels)
                swapped += 1 if report.faces_swapped else 0
                for stage, ms in report.timings_ms.items():
                    timings[stage] = timings.get(stage, 0.0) + ms
                clock = time.perf_counter()
                picture = bgr_to_frame(pixels, colorspace)
                picture.pts, picture.time_base = frame.pts, stream.time_base
                for packet in encoder.encode(picture):
                    audio.until(float(packet.dts * packet.time_base))
                    out.mux(packet)
                timings["encode"] += (time.perf_counter() - clock) * 1000
                done += 1
            clock = time.perf_counter()
            for packet in encoder.encode(None):
                out.mux(packet)
            audio.until(done / FPS)
            timings["encode"] += (time.perf_counter() - clock) * 1000
    wall = time.perf_counter() - started
    timings["total"] = wall * 1000
    return {"frames": done, "frames_swapped": swapped, "wall_s": wall, "timings_ms": timings, "audio": audio.state}


class _AudioCopy:
    """The first audio stream's packets, copied into `out` up to a time."""

    def __init__(self, opened: Any, out: Any) -> None:
        self.state = "none"
        self._pending: Any = None
        if not opened.streams.audio:
            self._packets: Iterator[Any] = iter(())
            return
        source = opened.streams.audio[0]
        self._stream = out.add_stream_from_template(source)
        self._packets = (p for p in opened.demux(source) if p.dts is not None)
        self.state = "copied"

    def until(self, seconds: float) -> None:
        while True:
            if self._pending is None:
                self._pending = next(self._packets, None)
                if self._pending is None:
                    return
            packet = self._pending
            if float(packet.pts * packet.time_base) >= seconds:
                return
            packet.stream = self._stream
            self._stream.container.mux(packet)
            self._pending = None


def child(args: argparse.Namespace) -> None:
    """`--job pipeline,plain --clip C --models M --frames N`: load the engine, run the jobs in turn, print one JSON
    object (each job's figures, and the peak RSS after loading and after each job)."""
    started = time.perf_counter()
    config = EngineConfig(models_dir=args.models, provider=ProviderChoice.cpu, intra_op_threads=args.intra_op_threads)
    engine = Engine.load(config)
    figures: dict[str, Any] = {"load_s": time.perf_counter() - started, "rss_loaded_mib": peak_rss_mib()}
    source = jpeg(source_image())
    jobs = {"pipeline": pipeline_job, "plain": plain_job}
    with tempfile.TemporaryDirectory(prefix="facemint-bench-video-out-") as tmp:
        for name in args.job.split(","):
            output = Path(tmp) / f"{name}.mp4"
            cpu = time.process_time()
            found = jobs[name](engine, source, args.clip, output, args.frames, args.processors)
            found["cpu_s"] = time.process_time() - cpu
            found["output_mib"] = output.stat().st_size / (1 << 20)
            found["rss_peak_mib"] = peak_rss_mib()
            found["load_average"] = os.getloadavg()[0]
            figures[name] = found
    print(json.dumps(figures))


def run_child(
    jobs: str,
    clip: Path,
    model_dir: Path,
    *,
    frames: int = 0,
    processors: str = "face_swapper",
    intra_op_threads: int = 0,
) -> dict:
    """Run `child` in a fresh process; add its ru_maxrss (from wait4) to what it prints."""
    command = [sys.executable, __file__, "--job", jobs, "--clip", str(clip), "--models", str(model_dir)]
    command += ["--frames", str(frames), "--processors", processors, "--intra-op-threads", str(intra_op_threads)]
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(command, stdout=out, cwd=HERE.parent)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        text = out.read()
    if proc.returncode:
        raise RuntimeError(f"the {jobs} job on {clip.name} failed with exit {proc.returncode}: {text[-500:]}")
    figures = json.loads(text.strip().splitlines()[-1])
    figures["ru_maxrss_mib"] = usage.ru_maxrss / 1024  # KiB on Linux
    return figures


# --- reporting -----------------------------------------------------------------------------------------------


def fps(job: dict) -> float:
    return job["frames"] / job["wall_s"]


def shares(timings: dict[str, float]) -> dict[str, float]:
    """Each stage's share of the summed stage times (threads' times add up, so the sum can exceed the wall)."""
    stages = {k: v for k, v in timings.items() if k != "total"}
    whole = sum(stages.values()) or 1.0
    return {k: v / whole for k, v in stages.items()}


def stage_table(title: str, rows: list[tuple[str, dict]]) -> None:
    """Per frame: ms of each stage (the stage's time summed over threads, divided by frames) and its share of all
    stages; then the wall time, the process's CPU time (every thread: ours, ONNX Runtime's, FFmpeg's) and their
    ratio, the cores the job kept busy (on a shared machine, what it was given)."""
    present = [s for s in STAGE_ORDER if any(s in job["timings_ms"] for _, job in rows)]
    emit(title)
    emit()
    emit("| run | frames | fps | " + " | ".join(present) + " | wall per frame | CPU per frame | cores used |")
    emit("|---|---:|---:|" + "---:|" * (len(present) + 3))
    for label, job in rows:
        frames, timings = job["frames"], job["timings_ms"]
        share = shares(timings)
        cells = []
        for stage in present:
            ms = timings.get(stage)
            cells.append("-" if ms is None else f"{ms / frames:.1f} ({share[stage]:.0%})")
        wall_ms, cpu_ms = job["wall_s"] * 1000 / frames, job["cpu_s"] * 1000 / frames
        cores = cpu_ms / wall_ms
        emit(
            f"| {label} | {frames} | {fps(job):.2f} | "
            + " | ".join(cells)
            + f" | {wall_ms:.1f} | {cpu_ms:.1f} | {cores:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 s and 12 s clips, one round, no stand-ins")
    parser.add_argument("--seconds", type=float, default=None, help="short clip (default 10, quick 3)")
    parser.add_argument("--long-seconds", type=float, default=None, help="long clip (default 60, quick 12)")
    parser.add_argument("--rounds", type=int, default=None, help="pipeline/plain pairs on demo models (2, quick 1)")
    parser.add_argument("--standin-frames", type=int, default=None, help="frames on stand-ins (6, quick 0: none)")
    parser.add_argument("--size", default=f"{WIDTH}x{HEIGHT}", help="frame size, WxH (default 1920x1080)")
    parser.add_argument(
        "--intra-op-threads",
        type=int,
        default=0,
        help="ONNX Runtime threads per model run (0: its default, as deployed)",
    )
    parser.add_argument("--json", type=Path, default=HERE / "out" / "video.json")
    parser.add_argument("--job", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--clip", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--models", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--processors", default="face_swapper", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        child(args)
        return
    short_s = args.seconds or (3.0 if args.quick else 10.0)
    long_s = args.long_seconds or (12.0 if args.quick else 60.0)
    rounds = args.rounds or (1 if args.quick else 2)
    standin_frames = args.standin_frames if args.standin_frames is not None else (0 if args.quick else 6)
    width, height = (int(v) for v in args.size.lower().split("x"))
    limit = 120 if args.quick else 900
    signal.signal(signal.SIGALRM, _raise_limit)
    signal.alarm(limit)
    started = time.perf_counter()

    env = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "versions": {**versions(), "av": av.__version__},
        "load_average_start": round(os.getloadavg()[0], 2),
        "clip": f"{width}x{height}, {FPS} fps, H.264 + AAC, one face; {short_s:g} s and {long_s:g} s",
    }
    print("## Video benchmark (CPU)\n")
    emit(f"- CPU: {env['cpu']}, {env['cores']} cores; {platform.system()} {platform.machine()}")
    emit("- " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    emit(f"- clips: {env['clip']}; output libx264 {ENCODER_PRESET} CRF {CRF}, audio copied")
    threads = args.intra_op_threads or "its default"
    emit(
        f"- ONNX Runtime intra-op threads: {threads}; the pipeline's pool: min(4, CPUs) = {min(4, os.cpu_count() or 1)}"
    )
    print(f"- load average at start: {env['load_average_start']:.2f}; time limit {limit} s")
    REPORT.append("")
    short, long = clips(short_s, long_s, (width, height))
    demo = models("demo")
    results: dict[str, Any] = {"environment": env, "rounds": []}

    title = f"Demo models, {short_s:g} s clip: pipeline vs plain loop ({rounds} round(s), order alternating)"
    with section(title):
        for turn in range(rounds):
            order = ("plain", "pipeline") if turn % 2 == 0 else ("pipeline", "plain")
            found = {name: run_child(name, short, demo, intra_op_threads=args.intra_op_threads) for name in order}
            results["rounds"].append(found)
            print(
                f"- round {turn + 1}: pipeline {fps(found['pipeline']['pipeline']):.2f} fps, plain "
                f"{fps(found['plain']['plain']):.2f} fps (load {os.getloadavg()[0]:.2f})",
                flush=True,
            )
        pipeline = [r["pipeline"]["pipeline"] for r in results["rounds"]]
        plain = [r["plain"]["plain"] for r in results["rounds"]]
        print()
        stage_table(
            f"Demo models, {short_s:g} s clip, per frame in ms (share of the stage times), best of {rounds} round(s):",
            [("pipeline", max(pipeline, key=fps)), ("plain loop", max(plain, key=fps))],
        )
        results["demo"] = {
            "pipeline_fps": [fps(j) for j in pipeline],
            "plain_fps": [fps(j) for j in plain],
            "speedup_median": statistics.median(fps(a) / fps(b) for a, b in zip(pipeline, plain, strict=True)),
            "speedup_best": fps(max(pipeline, key=fps)) / fps(max(plain, key=fps)),
            "cpu_per_frame_ms": {
                "pipeline": statistics.median(j["cpu_s"] * 1000 / j["frames"] for j in pipeline),
                "plain": statistics.median(j["cpu_s"] * 1000 / j["frames"] for j in plain),
            },
            "cores_used": {
                "pipeline": statistics.median(j["cpu_s"] / j["wall_s"] for j in pipeline),
                "plain": statistics.median(j["cpu_s"] / j["wall_s"] for j in plain),
            },
        }

    with section(f"Peak RSS, demo models: {short_s:g} s vs {long_s:g} s clip, pipeline, one process each"):
        long_run = run_child("pipeline", long, demo, intra_op_threads=args.intra_op_threads)
        emit()
        results["rss"] = rss_table(
            [
                (f"pipeline, {short_s:g} s", results["rounds"][0]["pipeline"], "pipeline"),
                (f"pipeline, {long_s:g} s", long_run, "pipeline"),
                (f"plain loop, {short_s:g} s", results["rounds"][0]["plain"], "plain"),
            ]
        )

    if standin_frames:
        title = f"Stand-in models: the first {standin_frames} frames, pipeline then plain loop, in one process"
        with section(title):
            standin = models("standin")
            run = run_child(
                "pipeline,plain", short, standin, frames=standin_frames, intra_op_threads=args.intra_op_threads
            )
            emit()
            stage_table(
                f"Stand-in models, the first {standin_frames} frames of the clip, per frame in ms (share):",
                [("pipeline", run["pipeline"]), ("plain loop", run["plain"])],
            )
            emit(
                f"\n(stand-ins: model load {run['load_s']:.1f} s, peak RSS {run['plain']['rss_peak_mib']:.0f} MiB "
                f"after both runs; load average {os.getloadavg()[0]:.2f})"
            )
            results["standin"] = {**run, "speedup": fps(run["pipeline"]) / fps(run["plain"])}
    else:
        print("\n(stand-in models skipped: --standin-frames 0, the default with --quick)")

    results["load_average_end"] = round(os.getloadavg()[0], 2)
    results["elapsed_s"] = time.perf_counter() - started
    summary(results, short_s, long_s, f"{width}x{height}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"\n{results['elapsed_s']:.0f} s in all; JSON in {args.json}")


def rss_table(rows: list[tuple[str, dict, str]]) -> dict[str, Any]:
    """Peak RSS of child processes that each ran one job (label, the child's figures, the job); returns the
    figures and the second row's growth over the first's."""
    emit("| job (one process each) | frames | fps | RSS loaded, MiB | peak RSS (VmHWM) | peak - loaded | ru_maxrss |")
    emit("|---|---:|---:|---:|---:|---:|---:|")
    found: dict[str, Any] = {}
    for label, run, job in rows:
        figures = run[job]
        peak, loaded = figures["rss_peak_mib"], run["rss_loaded_mib"]
        found[label] = {"loaded": loaded, "peak": peak, "ru_maxrss": run["ru_maxrss_mib"], "fps": fps(figures)}
        emit(
            f"| {label} | {figures['frames']} | {fps(figures):.2f} | {loaded:.0f} | {peak:.0f} | {peak - loaded:.0f} "
            f"| {run['ru_maxrss_mib']:.0f} |"
        )
    first, second = (v["peak"] for v in list(found.values())[:2])
    found["growth"] = second / first - 1
    return found


def summary(results: dict[str, Any], short_s: float, long_s: float, size: str) -> None:
    demo, rss = results["demo"], results["rss"]
    load = f"load average {results['environment']['load_average_start']:.2f} -> {results['load_average_end']:.2f}"
    speedup, growth = demo["speedup_median"], rss["growth"]
    cpu = demo["cpu_per_frame_ms"]
    lines = [
        f"- demo models, {short_s:g} s {size} clip: pipeline "
        + ", ".join(f"{v:.2f}" for v in demo["pipeline_fps"])
        + " fps, plain loop "
        + ", ".join(f"{v:.2f}" for v in demo["plain_fps"])
        + f" fps: **{speedup:.2f}x** (median of the rounds' ratios; best against best {demo['speedup_best']:.2f}x; "
        + f"target >= {TARGET_SPEEDUP}x): {'met' if speedup >= TARGET_SPEEDUP else 'NOT met'}; CPU per frame "
        + f"{cpu['pipeline']:.0f} ms (pipeline) vs {cpu['plain']:.0f} ms (plain), cores kept busy "
        + f"{demo['cores_used']['pipeline']:.2f} vs {demo['cores_used']['plain']:.2f} of {os.cpu_count()}",
        f"- peak RSS, {long_s:g} s vs {short_s:g} s clip: {rss[f'pipeline, {long_s:g} s']['peak']:.0f} vs "
        + f"{rss[f'pipeline, {short_s:g} s']['peak']:.0f} MiB, **{growth:+.1%}** (target within "
        + f"{TARGET_RSS_GROWTH:.0%}): {'met' if abs(growth) <= TARGET_RSS_GROWTH else 'NOT met'}",
    ]
    if "standin" in results:
        standin = results["standin"]
        model_share = sum(shares(standin["pipeline"]["timings_ms"]).get(s, 0) for s in ("detect", "swap", "embed"))
        lines.append(
            f"- stand-in models, {standin['pipeline']['frames']} frames: pipeline {fps(standin['pipeline']):.3f} "
            + f"fps, plain loop {fps(standin['plain']):.3f} fps ({standin['speedup']:.2f}x); detect + swap (the "
            + f"models) take {model_share:.0%} of the pipeline's stage time"
        )
    lines.append(f"- {load}; {results['environment']['cpu']}, {results['environment']['cores']} cores")
    print("\n### Summary against the targets\n")
    print("\n".join(lines))
    print("\n### Ready to paste (docs/benchmarks.md, Part 6)\n")
    print("```markdown")
    print(f"`bench/video.py`, {time.strftime('%Y-%m-%d %H:%M')} ({load}):\n")
    print("\n".join(REPORT))
    print()
    print("\n".join(lines))
    print("```")


if __name__ == "__main__":
    try:
        main()
    except TimeLimit as exc:
        sys.exit(str(exc))
