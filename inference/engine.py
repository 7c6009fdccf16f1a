"""The swap engine: insightface 2.1's SCRFD detector, ArcFace recogniser and INSwapper on ONNX Runtime.

Loaded once per process from a model directory (nothing is downloaded), checked against the models'
input/output contracts and the providers each session really got, warmed up, then shared by threads
(ONNX Runtime sessions are thread-safe; every per-call buffer is local).

decode -> detect (one pass at a fixed size) -> choose target faces -> embed the source -> swap -> paste back
on the face region only -> encode."""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from insightface.app.common import Face
from numpy.typing import NDArray

from inference.errors import (
    EngineError,
    InvalidFaceSelection,
    ModelContractError,
    ModelNotFound,
    NoMatchingFace,
    NoReferenceFace,
    NoSourceFace,
    NoTargetFace,
)
from inference.media import DecodedImage, MediaLimits, content_type, decode_image, encode_image
from inference.media import output_format as media_output_format
from inference.models import DETECTOR_FILE, RECOGNIZER_FILE, SWAPPER_FILE, is_demo_model
from inference.paste import paste_face
from inference.providers import CPU, ProviderChoice, ProviderPlan, check_sessions, plan
from inference.selection import FaceMode, FaceSelection

logger = logging.getLogger("inference.engine")

MODEL_FILES = {"detector": DETECTOR_FILE, "recognizer": RECOGNIZER_FILE, "swapper": SWAPPER_FILE}


@dataclass(frozen=True, slots=True)
class EngineConfig:
    models_dir: Path
    provider: ProviderChoice = ProviderChoice.auto
    det_size: int = 640
    det_threshold: float = 0.5
    limits: MediaLimits = field(default_factory=MediaLimits)
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
    model_set: str  # "real" or "demo"


def _no_checkpoint(stage: str) -> None:
    return None


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


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """insightface prints while loading ('inswapper-shape: ...') and ONNX Runtime warns about providers it cannot
    offer; the engine prints nothing to stdout and checks providers itself, so both go to the debug log."""
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"onnxruntime.*")
        yield
    if captured.getvalue().strip():
        logger.debug("while loading models: %s", captured.getvalue().strip())


class Engine:
    """Use `Engine.load(config)`; one instance per process, shared by threads."""

    def __init__(
        self, *, config: EngineConfig, detector: Any, recognizer: Any, swapper: Any, providers: list[str], demo: bool
    ) -> None:
        self.config = config
        self._detector = detector
        self._recognizer = recognizer
        self._swapper = swapper
        self.providers = providers
        self.model_set = "demo" if demo else "real"

    # --- loading ------------------------------------------------------------------------------------

    @classmethod
    def load(cls, config: EngineConfig) -> Engine:
        paths = model_paths(config.models_dir)
        provider_plan = plan(config.provider, cache_dir=config.cache_dir)
        detector, recognizer, swapper = _load_models(paths, provider_plan, config)
        demo_flags = {name: is_demo_model(path) for name, path in paths.items()}
        if len(set(demo_flags.values())) != 1:
            raise ModelContractError(
                f"demo and real models are mixed in {config.models_dir}: {demo_flags}", models=demo_flags
            )
        engine = cls(
            config=config,
            detector=detector,
            recognizer=recognizer,
            swapper=swapper,
            providers=[],
            demo=all(demo_flags.values()),
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
        engine.providers = check_sessions(provider_plan, sessions)
        logger.info(
            "engine ready: %s models from %s on %s (%s)",
            engine.model_set,
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

    # --- the pipeline --------------------------------------------------------------------------------

    def swap(
        self,
        source: bytes,
        target: bytes,
        *,
        faces: FaceSelection | str = FaceSelection(),
        reference: bytes | None = None,
        output_format: str = "png",
        quality: int = 90,
        checkpoint: Callable[[str], None] | None = None,
    ) -> SwapResult:
        """`checkpoint(stage)` runs before each stage; raising there stops the swap at that stage boundary (how a
        worker honours a cancel)."""
        selection = FaceSelection.parse(faces) if isinstance(faces, str) else faces
        wants_reference = selection.mode is FaceMode.reference
        if wants_reference and reference is None:
            raise InvalidFaceSelection("the reference mode needs a reference image")
        fmt = media_output_format(output_format, quality)  # checked before any work is done
        timer = _Timer()
        check = checkpoint or _no_checkpoint
        check("decode")
        with timer.stage("decode"):
            source_image = decode_image(source, limits=self.config.limits)
            target_image = decode_image(target, limits=self.config.limits)
            reference_image = None
            if wants_reference and reference is not None:  # b"" is decoded, and refused as an invalid image
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
            source_face = max(source_faces, key=_area)
            self._recognizer.get(source_image.pixels, source_face)
            chosen = self._choose(target_image, target_faces, selection, reference_image, reference_faces)

        frame = np.array(target_image.pixels, copy=True)
        for face in chosen:
            check("swap")
            with timer.stage("swap"):
                crop, matrix = self._swapper.get(target_image.pixels, face, source_face, paste_back=False)
            with timer.stage("paste"):
                paste_face(frame, crop, matrix)

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
            faces_swapped=len(chosen),
            timings_ms=timer.finish(),
            providers=list(self.providers),
            model_set=self.model_set,
        )

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

    def _choose(
        self,
        target: DecodedImage,
        faces: list[Any],
        selection: FaceSelection,
        reference: DecodedImage | None,
        reference_faces: list[Any],
    ) -> list[Any]:
        if selection.mode is FaceMode.largest:
            return [max(faces, key=_area)]
        if selection.mode is FaceMode.all:
            return faces
        if selection.mode is FaceMode.index:
            ordered = sorted(faces, key=lambda f: (float(f.bbox[0]), float(f.bbox[1])))
            missing = [i for i in selection.indices if i >= len(ordered)]
            if missing:
                raise InvalidFaceSelection(
                    f"face index {missing[0]} is out of range: the target has {len(ordered)} face(s)",
                    faces_detected=len(ordered),
                )
            return [ordered[i] for i in selection.indices]
        if reference is None:
            raise InvalidFaceSelection("the reference mode needs a reference image")
        if not reference_faces:
            raise NoReferenceFace("no face was found in the reference image")
        wanted = max(reference_faces, key=_area)
        self._recognizer.get(reference.pixels, wanted)
        best, best_similarity = None, -1.0
        for face in faces:
            self._recognizer.get(target.pixels, face)
            similarity = float(np.dot(face.normed_embedding, wanted.normed_embedding))
            if similarity > best_similarity:
                best, best_similarity = face, similarity
        if best is None or best_similarity < selection.threshold:
            raise NoMatchingFace(
                f"no target face is similar enough to the reference (best {best_similarity:.2f}, "
                f"threshold {selection.threshold:.2f})",
                best_similarity=round(best_similarity, 4),
                threshold=selection.threshold,
            )
        return [best]


def model_paths(models_dir: Path) -> dict[str, Path]:
    paths = {name: Path(models_dir) / file for name, file in MODEL_FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise ModelNotFound(
            f"model files missing in {models_dir}: {', '.join(missing)} (run `facemint models fetch`, or "
            "`facemint models demo DIR` for demo models)",
            missing=missing,
        )
    return paths


def _load_models(paths: dict[str, Path], provider_plan: ProviderPlan, config: EngineConfig) -> tuple[Any, Any, Any]:
    import onnxruntime
    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.model_zoo.inswapper import INSwapper
    from insightface.model_zoo.scrfd import SCRFD

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # ORT warns about the swapper's unused emap initializer; that is by design
    if config.intra_op_threads:
        options.intra_op_num_threads = config.intra_op_threads
    ctx_id = -1 if provider_plan.expected_primary == CPU else 0
    loaded = {}
    with _quiet_loading():
        for name, path in paths.items():
            # Routed by insightface's own ModelRouter (by input/output shapes), never by file name.
            try:
                model = get_model(str(path), providers=list(provider_plan.requested), sess_options=options)
            except Exception as exc:  # ONNX Runtime and onnx raise their own types for a corrupt or foreign file
                raise ModelContractError(
                    f"{path.name} could not be loaded as an ONNX model: {type(exc).__name__}: {exc}"[:500],
                    model=name,
                ) from exc
            loaded[name] = model
        expected = {"detector": SCRFD, "recognizer": ArcFaceONNX, "swapper": INSwapper}
        for name, model in loaded.items():
            if not isinstance(model, expected[name]):
                raise ModelContractError(
                    f"{paths[name].name} does not have the {name} contract (insightface routed it to "
                    f"{type(model).__name__ if model is not None else 'nothing'})",
                    model=name,
                )
        _check_contracts(loaded, paths)
        size = (config.det_size, config.det_size)
        loaded["detector"].prepare(ctx_id, input_size=size, det_thresh=config.det_threshold)
        loaded["recognizer"].prepare(ctx_id)
    return loaded["detector"], loaded["recognizer"], loaded["swapper"]


def _check_contracts(models: dict[str, Any], paths: dict[str, Path]) -> None:
    detector, recognizer, swapper = models["detector"], models["recognizer"], models["swapper"]
    if not (detector.use_kps and len(detector.session.get_outputs()) == 9):
        raise ModelContractError(f"{paths['detector'].name}: the detector must have 9 outputs with keypoints")
    if tuple(recognizer.input_size) != (112, 112) or recognizer.session.get_outputs()[0].shape[-1] != 512:
        raise ModelContractError(f"{paths['recognizer'].name}: the recogniser must map 112x112 to 512")
    emap = getattr(swapper, "emap", None)
    if tuple(swapper.input_size) != (128, 128) or emap is None or emap.shape != (512, 512) or emap.dtype != np.float32:
        raise ModelContractError(f"{paths['swapper'].name}: the swapper must take 128x128 + 512 with a float32 emap")
