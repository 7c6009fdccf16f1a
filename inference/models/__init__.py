"""Model files for the engine: demo stand-ins with the real models' contracts, metadata helpers, the real models'
manifest (InsightFace weights: non-commercial research only) and a resumable, checksum-verified fetcher."""

from inference.models.demo import (
    DEMO_METADATA_KEY,
    DETECTOR_FILE,
    ENHANCER_FILE,
    RECOGNIZER_FILE,
    SWAPPER_FILE,
    build_detector,
    build_enhancer,
    build_recognizer,
    build_swapper,
    demo_face_colours,
    draw_demo_face,
    is_demo_model,
    write_demo_models,
)
from inference.models.fetch import VerifyResult, fetch_models, require_models, verify_models
from inference.models.manifest import (
    GFPGAN_LICENCE,
    INSIGHTFACE_LICENCE,
    OPTIONAL_MODELS,
    REAL_MODELS,
    ManifestError,
    ModelFile,
    load_manifest,
    model_from_mapping,
    model_to_mapping,
)
from inference.models.metadata import ModelMetadata, NotAnOnnxModel, read_model_metadata

__all__ = [
    "DEMO_METADATA_KEY",
    "DETECTOR_FILE",
    "ENHANCER_FILE",
    "GFPGAN_LICENCE",
    "INSIGHTFACE_LICENCE",
    "OPTIONAL_MODELS",
    "REAL_MODELS",
    "RECOGNIZER_FILE",
    "SWAPPER_FILE",
    "ManifestError",
    "ModelFile",
    "ModelMetadata",
    "NotAnOnnxModel",
    "VerifyResult",
    "build_detector",
    "build_enhancer",
    "build_recognizer",
    "build_swapper",
    "demo_face_colours",
    "draw_demo_face",
    "fetch_models",
    "is_demo_model",
    "load_manifest",
    "model_from_mapping",
    "model_to_mapping",
    "read_model_metadata",
    "require_models",
    "verify_models",
    "write_demo_models",
]
