"""Loading the engine's models: file names, which kind a model set is (demo, stand-in, real), ONNX Runtime session
options, and insightface's detector, recogniser and swapper checked against their contracts."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from inference.errors import ModelContractError, ModelNotFound
from inference.models import DETECTOR_FILE, RECOGNIZER_FILE, SWAPPER_FILE, is_demo_model
from inference.models.standin import is_standin_model
from inference.providers import CPU, ProviderPlan

__all__ = ["MODEL_FILES", "load_insightface_models", "model_kind", "model_paths", "quiet_loading", "session_options"]

logger = logging.getLogger("inference.engine")

MODEL_FILES = {"detector": DETECTOR_FILE, "recognizer": RECOGNIZER_FILE, "swapper": SWAPPER_FILE}
"""The required models; the enhancer (`ENHANCER_FILE`) is loaded too when the directory has it."""


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """insightface prints while loading ('inswapper-shape: ...') and ONNX Runtime warns about providers it cannot
    offer; the engine prints nothing to stdout and checks providers itself, so both go to the debug log."""
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"onnxruntime.*")
        yield
    if captured.getvalue().strip():
        logger.debug("while loading models: %s", captured.getvalue().strip())


def model_kind(path: Path) -> str:
    """The kind of a model file from its metadata (never its weights): "demo", "standin" or "real"."""
    if is_demo_model(path):
        return "demo"
    return "standin" if is_standin_model(path) else "real"


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


def session_options(intra_op_threads: int = 0) -> Any:
    """ONNX Runtime session options for every model (`intra_op_threads` 0: ONNX Runtime's default)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # ORT warns about the swapper's unused emap initializer; that is by design
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    # Idle intra-op threads sleep instead of spinning. A video runs several frames at once, each model call on
    # the same thread pool; spinning threads then take the CPU from the calls that have work. On 2 vCPUs (demo
    # models, 640x360) the pipeline went from 70 to 125 frames a second; one image alone took the same time.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def load_insightface_models(
    paths: dict[str, Path], provider_plan: ProviderPlan, *, det_size: int, det_threshold: float, options: Any
) -> tuple[Any, Any, Any]:
    """The detector (prepared at one fixed `det_size`), recogniser and swapper, loaded by insightface's own
    shape router and checked against their contracts."""
    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    from insightface.model_zoo.inswapper import INSwapper
    from insightface.model_zoo.scrfd import SCRFD

    ctx_id = -1 if provider_plan.expected_primary == CPU else 0
    loaded = {}
    with quiet_loading():
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
        loaded["detector"].prepare(ctx_id, input_size=(det_size, det_size), det_thresh=det_threshold)
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
