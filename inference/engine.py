"""The swap engine: insightface 2.1's SCRFD detector, ArcFace recogniser and INSwapper on ONNX Runtime, and the
optional GFPGAN 1.4 face enhancer.

Loaded once per process from a model directory (nothing is downloaded), checked against the models'
input/output contracts and the providers each session really got, warmed up, then shared by threads
(ONNX Runtime sessions are thread-safe; every per-call buffer is local).

One per-frame step serves images and videos: detect (one pass at a fixed size) -> choose the target faces ->
swap each with the source embedding (computed once per job) -> paste back on the face region only -> enhance
each swapped face when `face_enhancer` is asked for. `swap` runs it on one image; `swap_video` streams it over a
video's frames (`inference.video_pipeline`)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
from insightface.app.common import Face
from numpy.typing import NDArray

from inference.enhancer import FaceEnhancer
from inference.errors import (
    EngineError,
    InvalidFaceSelection,
    ModelContractError,
    NoMatchingFace,
    NoReferenceFace,
    NoSourceFace,
    NoTargetFace,
    ProcessorUnavailable,
)
from inference.loading import (
    MODEL_FILES,
    load_insightface_models,
    model_kind,
    model_paths,
    quiet_loading,
    session_options,
)
from inference.media import DecodedImage, MediaLimits, content_type, decode_image, encode_image
from inference.media import output_format as media_output_format
from inference.models import ENHANCER_FILE
from inference.paste import paste_face
from inference.processors import DEFAULT_PROCESSORS, FACE_ENHANCER, FACE_SWAPPER, parse_processors
from inference.providers import ProviderChoice, check_sessions, plan
from inference.selection import FaceMode, FaceSelection
from inference.video import Trim, VideoLimits, probe_video, resolve_trim
from inference.video_pipeline import ENCODER_PRESET, FrameReport, run_pipeline

__all__ = [
    "MODEL_FILES",
    "Engine",
    "EngineConfig",
    "FaceMode",
    "FaceSelection",
    "SwapResult",
    "VideoResult",
    "model_paths",
]

logger = logging.getLogger("inference.engine")


MAX_CRF: Final = 51  # libx264's 8-bit range is 0 (lossless) to 51
MAX_BATCH_FRAMES: Final = 256
DEFAULT_VIDEO_THREADS: Final = 4


@dataclass(frozen=True, slots=True)
class EngineConfig:
    models_dir: Path
    provider: ProviderChoice = ProviderChoice.auto
    det_size: int = 640
    det_threshold: float = 0.5
    limits: MediaLimits = field(default_factory=MediaLimits)
    video_limits: VideoLimits = field(default_factory=VideoLimits)
    intra_op_threads: int = 0  # 0: ONNX Runtime's default
    cache_dir: Path | None = None  # TensorRT engine cache


@dataclass(slots=True)
class SwapResult:
    image: bytes
    format: str
    content_type: str
    width: int
    height: int
    faces_detected: int
    faces_swapped: int
    timings_ms: dict[str, float]
    providers: list[str]
    model_set: str  # "real", "standin" or "demo"
    processors: tuple[str, ...] = DEFAULT_PROCESSORS


@dataclass(slots=True)
class VideoResult:
    """A finished video swap. `frames_swapped`: frames where at least one face was swapped (the others are
    written unchanged); `audio`: "copied", "transcoded", "dropped" (why in `audio_note`) or "none";
    `width` x `height`: the output's (upright) size. Stage timings are summed over frames and threads;
    `total` is wall time."""

    frames_total: int
    frames_done: int
    seconds_done: float
    width: int
    height: int
    fps: float
    has_audio: bool
    size_bytes: int
    timings_ms: dict[str, float]
    providers: list[str]
    model_set: str
    frames_swapped: int
    faces_swapped: int
    audio: str
    audio_note: str | None
    processors: tuple[str, ...]
    content_type: str = "video/mp4"


# Given a job's source face embedding (normalised) once it is computed: the worker's abuse check. Raising stops the
# swap before it starts.
SourceFaceHook = Callable[[NDArray[np.float32]], None]


@dataclass(frozen=True, slots=True)
class _Plan:
    """What a job computes once: the source face with its embedding, the face choice, the reference face's
    embedding (reference mode), and whether to enhance."""

    source_face: Any
    selection: FaceSelection
    reference_embedding: NDArray[np.float32] | None
    enhance: bool


def _area(face: Any) -> float:
    return float((face.bbox[2] - face.bbox[0]) * (face.bbox[3] - face.bbox[1]))


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._start = time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + (time.perf_counter() - started) * 1000

    def finish(self) -> dict[str, float]:
        self.timings["total"] = (time.perf_counter() - self._start) * 1000
        return {k: round(v, 3) for k, v in self.timings.items()}


# scikit-image 0.26 deprecates the call insightface's face_align makes on every alignment (hence the <2.2 pin).
warnings.filterwarnings("ignore", message=r".*`estimate` is deprecated", category=FutureWarning)


class Engine:
    """Use `Engine.load(config)`; one instance per process, shared by threads."""

    def __init__(
        self,
        *,
        config: EngineConfig,
        detector: Any,
        recognizer: Any,
        swapper: Any,
        providers: list[str],
        model_set: str,
        enhancer: FaceEnhancer | None = None,
    ) -> None:
        self.config = config
        self._detector = detector
        self._recognizer = recognizer
        self._swapper = swapper
        self._enhancer = enhancer
        self.providers = providers
        self.model_set = model_set
        self.processors: tuple[str, ...] = (FACE_SWAPPER, FACE_ENHANCER) if enhancer else (FACE_SWAPPER,)

    # --- loading ------------------------------------------------------------------------------------

    @classmethod
    def load(cls, config: EngineConfig) -> Engine:
        paths = model_paths(config.models_dir)
        enhancer_path = Path(config.models_dir) / ENHANCER_FILE
        provider_plan = plan(config.provider, cache_dir=config.cache_dir)
        options = session_options(config.intra_op_threads)
        detector, recognizer, swapper = load_insightface_models(
            paths, provider_plan, det_size=config.det_size, det_threshold=config.det_threshold, options=options
        )
        enhancer = None
        if enhancer_path.is_file():
            paths = {**paths, "enhancer": enhancer_path}
            with quiet_loading():
                enhancer = FaceEnhancer.load(enhancer_path, providers=provider_plan.requested, sess_options=options)
        kinds = {name: model_kind(path) for name, path in paths.items()}
        if len(set(kinds.values())) != 1:
            raise ModelContractError(
                f"demo, stand-in and real models are mixed in {config.models_dir}: {kinds}", models=kinds
            )
        engine = cls(
            config=config,
            detector=detector,
            recognizer=recognizer,
            swapper=swapper,
            providers=[],
            model_set=next(iter(kinds.values())),
            enhancer=enhancer,
        )
        try:
            engine._warm_up()
        except EngineError:
            raise
        except Exception as exc:  # a file that passed the static checks but does not run as its contract says
            raise ModelContractError(
                f"the models in {config.models_dir} failed their warm-up run: {exc}"[:500]
            ) from exc
        sessions = [("detector", session) for session in detector.resolution_sessions.values()] + [
            ("recognizer", recognizer.session),
            ("swapper", swapper.session),
        ]
        if enhancer is not None:
            sessions.append(("enhancer", enhancer.session))
        engine.providers = check_sessions(provider_plan, sessions)
        logger.info(
            "engine ready: %s models (%s) from %s on %s (%s)",
            engine.model_set,
            ", ".join(engine.processors),
            config.models_dir,
            ", ".join(engine.providers),
            provider_plan.reason,
        )
        return engine

    def _warm_up(self) -> None:
        """Create the fixed-size detector session and run every model once, so the first request pays nothing
        (and a TensorRT build or cuDNN algorithm search happens at start-up)."""
        # Noise, not black: a black crop has a zero embedding, and normalising it divides by zero.
        blank = np.random.default_rng(0).integers(0, 256, (self.config.det_size, self.config.det_size, 3), np.uint8)
        self._detect(blank)
        face = Face(
            bbox=np.array([200, 200, 440, 440], dtype=np.float32),
            kps=np.array([[270, 290], [370, 290], [320, 340], [280, 390], [360, 390]], dtype=np.float32),
            det_score=1.0,
        )
        self._recognizer.get(blank, face)
        self._swapper.get(blank, face, face, paste_back=False)
        if self._enhancer is not None:
            self._enhancer.warm_up()

    # --- images --------------------------------------------------------------------------------------

    def swap(
        self,
        source: bytes,
        target: bytes,
        *,
        faces: FaceSelection | str = FaceSelection(),
        reference: bytes | None = None,
        output_format: str = "png",
        quality: int = 90,
        processors: str | Sequence[str] = DEFAULT_PROCESSORS,
        checkpoint: Callable[[str], None] | None = None,
        on_source_face: SourceFaceHook | None = None,
    ) -> SwapResult:
        """Swap the source face onto the target image's chosen faces. `processors`: "face_swapper" (always) and
        optionally "face_enhancer". `checkpoint(stage)` runs before each stage; raising there stops the swap at
        that stage boundary (how a worker honours a cancel). `on_source_face(embedding)` is given the source
        face's normalised embedding as soon as it exists, before any swap; raising there stops the swap too."""
        selection = self._selection(faces, reference)
        pipeline = self._processors(processors)
        fmt = media_output_format(output_format, quality)  # checked before any work is done
        timer = _Timer()
        check = checkpoint or _no_checkpoint
        check("decode")
        with timer.stage("decode"):
            source_image = decode_image(source, limits=self.config.limits)
            target_image = decode_image(target, limits=self.config.limits)
            reference_image = None
            if selection.mode is FaceMode.reference and reference is not None:  # b"" is refused as an invalid image
                reference_image = decode_image(reference, limits=self.config.limits)

        check("detect")
        with timer.stage("detect"):
            target_faces = self._detect(target_image.pixels)
            source_faces = self._detect(source_image.pixels)
            reference_faces = self._detect(reference_image.pixels) if reference_image is not None else []
        if not source_faces:
            raise NoSourceFace("no face was found in the source image")
        if not target_faces:
            raise NoTargetFace("no face was found in the target image")

        check("embed")
        with timer.stage("embed"):
            job = self._plan(source_image, source_faces, selection, reference_image, reference_faces, pipeline)
        if on_source_face is not None:
            on_source_face(job.source_face.normed_embedding)

        frame = np.array(target_image.pixels, copy=True)
        check("swap")
        report = self._apply(job, frame, target_faces, strict=True)
        for stage, ms in report.timings_ms.items():
            timer.timings[stage] = timer.timings.get(stage, 0.0) + ms

        check("encode")
        with timer.stage("encode"):
            data = encode_image(frame, format=fmt, quality=quality, alpha=target_image.alpha)
        return SwapResult(
            image=data,
            format=fmt,
            content_type=content_type(fmt),
            width=target_image.width,
            height=target_image.height,
            faces_detected=len(target_faces),
            faces_swapped=report.faces_swapped,
            timings_ms=timer.finish(),
            providers=list(self.providers),
            model_set=self.model_set,
            processors=pipeline,
        )

    # --- videos --------------------------------------------------------------------------------------

    def swap_video(
        self,
        source: bytes,
        target: Path,
        output: Path,
        *,
        faces: FaceSelection | str = FaceSelection(),
        reference: bytes | None = None,
        trim: Trim | None = None,
        processors: str | Sequence[str] = DEFAULT_PROCESSORS,
        crf: int = 20,
        batch_frames: int = 8,
        threads: int = 0,
        progress: Callable[[int, int], None] | None = None,
        checkpoint: Callable[[str], None] | None = None,
        on_source_face: SourceFaceHook | None = None,
    ) -> VideoResult:
        """Swap the source face onto the faces of every frame of the video `target` (within `trim`) and write
        an MP4 to `output` (H.264 yuv420p at `crf`, the original audio copied; see `inference.video_pipeline`).

        The target is probed first with `config.video_limits` (the video errors of `inference.video`). The
        source face and embedding, and the reference's, are computed once. Each frame's faces are chosen on
        their own: a frame with no face chosen (none detected, an index it lacks, none like the reference) is
        written unchanged; a video where no frame had a face to swap is refused as `NoTargetFace` (or
        `NoMatchingFace` in reference mode) and leaves no file.

        `batch_frames` frames at a time go to a pool of `threads` threads (0: min(4, CPUs)). `progress(done,
        total)` is called after each batch; `checkpoint("batch")` before each: when it raises, the frames
        already done are finalised into a playable, shorter `output` (no file when there are none) and the same
        exception is re-raised. `on_source_face` as for `swap`: before the first frame."""
        selection = self._selection(faces, reference)
        pipeline = self._processors(processors)
        if isinstance(crf, bool) or not isinstance(crf, int) or not 0 <= crf <= MAX_CRF:
            raise ValueError(f"crf must be an integer from 0 to {MAX_CRF}, not {crf!r}")
        if not 1 <= batch_frames <= MAX_BATCH_FRAMES:
            raise ValueError(f"batch_frames must be from 1 to {MAX_BATCH_FRAMES}, not {batch_frames!r}")
        if threads < 0:
            raise ValueError(f"threads must be 0 (automatic) or more, not {threads!r}")
        workers = threads or min(DEFAULT_VIDEO_THREADS, os.cpu_count() or 1)
        limits = self.config.video_limits
        started = time.perf_counter()

        probe = probe_video(Path(target), limits=limits)
        span = resolve_trim(
            probe, trim_start=trim.start if trim else None, trim_end=trim.end if trim else None
        )  # a trim resolved on another probe is checked against this one
        prepare_clock = time.perf_counter()
        work = self.frame_swapper(
            source, faces=selection, reference=reference, processors=pipeline, on_source_face=on_source_face
        )
        prepare_ms = (time.perf_counter() - prepare_clock) * 1000

        outcome = run_pipeline(
            Path(target),
            Path(output),
            probe=probe,
            trim=span,
            work=work,
            crf=crf,
            batch_frames=batch_frames,
            threads=workers,
            max_pixels=limits.max_pixels_per_frame,
            progress=progress,
            checkpoint=checkpoint,
        )
        if outcome.frames_swapped == 0:
            Path(output).unlink(missing_ok=True)
            if selection.mode is FaceMode.reference:
                raise NoMatchingFace(
                    "no face in any frame of the video is similar enough to the reference",
                    threshold=selection.threshold,
                )
            raise NoTargetFace("no face was found in any frame of the video", frames=outcome.frames_done)
        timings = {"probe": round((prepare_clock - started) * 1000, 3), "prepare": round(prepare_ms, 3)}
        timings.update(outcome.timings_ms)
        timings["total"] = round((time.perf_counter() - started) * 1000, 3)
        logger.info(
            "video swapped: %d frames (%d with faces) in %.0f ms, %s preset, audio %s",
            outcome.frames_done,
            outcome.frames_swapped,
            timings["total"],
            ENCODER_PRESET,
            outcome.audio,
        )
        return VideoResult(
            frames_total=outcome.frames_total,
            frames_done=outcome.frames_done,
            seconds_done=round(outcome.seconds_done, 6),
            width=outcome.width,
            height=outcome.height,
            fps=outcome.fps,
            has_audio=outcome.audio in ("copied", "transcoded"),
            size_bytes=outcome.size_bytes,
            timings_ms=timings,
            providers=list(self.providers),
            model_set=self.model_set,
            frames_swapped=outcome.frames_swapped,
            faces_swapped=outcome.faces_swapped,
            audio=outcome.audio,
            audio_note=outcome.audio_note,
            processors=pipeline,
        )

    # --- the per-frame step --------------------------------------------------------------------------

    def frame_swapper(
        self,
        source: bytes,
        *,
        faces: FaceSelection | str = FaceSelection(),
        reference: bytes | None = None,
        processors: str | Sequence[str] = DEFAULT_PROCESSORS,
        on_source_face: SourceFaceHook | None = None,
    ) -> Callable[[NDArray[np.uint8]], FrameReport]:
        """The per-frame step of a video (detect, choose, swap, paste, enhance, in place on a BGR frame), with the
        source face and embedding (and the reference's) computed once, here. `swap_video` hands it to its pool;
        a plain frame loop (the benchmark's baseline) calls it frame by frame. Thread-safe."""
        selection = self._selection(faces, reference)
        pipeline = self._processors(processors)
        source_image = decode_image(source, limits=self.config.limits)
        reference_image = None
        if selection.mode is FaceMode.reference and reference is not None:
            reference_image = decode_image(reference, limits=self.config.limits)
        source_faces = self._detect(source_image.pixels)
        if not source_faces:
            raise NoSourceFace("no face was found in the source image")
        reference_faces = self._detect(reference_image.pixels) if reference_image is not None else []
        job = self._plan(source_image, source_faces, selection, reference_image, reference_faces, pipeline)
        if on_source_face is not None:
            on_source_face(job.source_face.normed_embedding)
        return lambda pixels: self._video_frame(job, pixels)

    def _selection(self, faces: FaceSelection | str, reference: bytes | None) -> FaceSelection:
        selection = FaceSelection.parse(faces) if isinstance(faces, str) else faces
        if selection.mode is FaceMode.reference and reference is None:
            raise InvalidFaceSelection("the reference mode needs a reference image")
        return selection

    def _processors(self, processors: str | Sequence[str]) -> tuple[str, ...]:
        pipeline = parse_processors(processors)
        if FACE_ENHANCER in pipeline and self._enhancer is None:
            raise ProcessorUnavailable(
                f"the {FACE_ENHANCER} processor needs {ENHANCER_FILE} in {self.config.models_dir}, which this "
                "installation does not have",
                processor=FACE_ENHANCER,
                model=ENHANCER_FILE,
            )
        return pipeline

    def _plan(
        self,
        source: DecodedImage,
        source_faces: list[Any],
        selection: FaceSelection,
        reference: DecodedImage | None,
        reference_faces: list[Any],
        pipeline: tuple[str, ...],
    ) -> _Plan:
        """The source face (the largest) with its embedding, and the reference's embedding in reference mode."""
        source_face = max(source_faces, key=_area)
        self._recognizer.get(source.pixels, source_face)
        reference_embedding = None
        if selection.mode is FaceMode.reference:
            if reference is None:
                raise InvalidFaceSelection("the reference mode needs a reference image")
            if not reference_faces:
                raise NoReferenceFace("no face was found in the reference image")
            wanted = max(reference_faces, key=_area)
            self._recognizer.get(reference.pixels, wanted)
            reference_embedding = wanted.normed_embedding
        return _Plan(source_face, selection, reference_embedding, FACE_ENHANCER in pipeline)

    def _video_frame(self, job: _Plan, frame: NDArray[np.uint8]) -> FrameReport:
        """One video frame, in place: detect, then `_apply` leniently."""
        started = time.perf_counter()
        faces = self._detect(frame)
        return self._apply(job, frame, faces, strict=False, detect_ms=(time.perf_counter() - started) * 1000)

    def _apply(
        self,
        job: _Plan,
        frame: NDArray[np.uint8],
        faces: list[Any],
        *,
        strict: bool,
        detect_ms: float | None = None,
    ) -> FrameReport:
        """Choose among the detected `faces` of `frame`, swap, paste and enhance them, in place. `strict` (one
        image): a face choice that cannot be met raises; otherwise (video frames) that frame is left as it is."""
        timer = _Timer()
        if detect_ms is not None:
            timer.timings["detect"] = detect_ms
        with timer.stage("embed"):
            chosen = self._choose(job, frame, faces, strict=strict)
        for face in chosen:
            with timer.stage("swap"):
                crop, matrix = self._swapper.get(frame, face, job.source_face, paste_back=False)
            with timer.stage("paste"):
                paste_face(frame, crop, matrix)
        if job.enhance and self._enhancer is not None:
            with timer.stage("enhance"):
                for face in chosen:
                    self._enhancer.enhance(frame, face.kps)
        timings = {k: v for k, v in timer.timings.items() if k != "embed" or job.reference_embedding is not None}
        return FrameReport(faces_detected=len(faces), faces_swapped=len(chosen), timings_ms=timings)

    def _choose(self, job: _Plan, frame: NDArray[np.uint8], faces: list[Any], *, strict: bool) -> list[Any]:
        selection = job.selection
        if not faces:
            return []
        if selection.mode is FaceMode.largest:
            return [max(faces, key=_area)]
        if selection.mode is FaceMode.all:
            return faces
        if selection.mode is FaceMode.index:
            ordered = sorted(faces, key=lambda f: (float(f.bbox[0]), float(f.bbox[1])))
            missing = [i for i in selection.indices if i >= len(ordered)]
            if missing and strict:
                raise InvalidFaceSelection(
                    f"face index {missing[0]} is out of range: the target has {len(ordered)} face(s)",
                    faces_detected=len(ordered),
                )
            return [ordered[i] for i in selection.indices if i < len(ordered)]
        assert job.reference_embedding is not None
        best, best_similarity = None, -1.0
        for face in faces:
            self._recognizer.get(frame, face)
            similarity = float(np.dot(face.normed_embedding, job.reference_embedding))
            if similarity > best_similarity:
                best, best_similarity = face, similarity
        if best is None or best_similarity < selection.threshold:
            if not strict:
                return []
            raise NoMatchingFace(
                f"no target face is similar enough to the reference (best {best_similarity:.2f}, "
                f"threshold {selection.threshold:.2f})",
                best_similarity=round(best_similarity, 4),
                threshold=selection.threshold,
            )
        return [best]

    def _detect(self, pixels: NDArray[np.uint8]) -> list[Any]:
        height, width = pixels.shape[:2]
        if min(height, width) * self.config.det_size < max(height, width):
            # Scaled to the detector's input, the short side would be under one pixel (and OpenCV asserts):
            # no face can be found in such a sliver.
            return []
        size = (self.config.det_size, self.config.det_size)
        bboxes, kpss = self._detector.detect(pixels, input_size=size, max_num=0)
        if kpss is None:
            raise ModelContractError("the detector returned no landmarks: the swap needs a keypoint model")
        return [Face(bbox=bboxes[i, :4], kps=kpss[i], det_score=float(bboxes[i, 4])) for i in range(bboxes.shape[0])]


def _no_checkpoint(stage: str) -> None:
    return None
