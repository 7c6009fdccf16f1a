"""Model files for the engine: demo stand-ins with the real models' contracts, and metadata helpers."""

from inference.models.demo import (
    DEMO_METADATA_KEY,
    DETECTOR_FILE,
    RECOGNIZER_FILE,
    SWAPPER_FILE,
    build_detector,
    build_recognizer,
    build_swapper,
    demo_face_colours,
    draw_demo_face,
    is_demo_model,
    write_demo_models,
)
from inference.models.metadata import ModelMetadata, NotAnOnnxModel, read_model_metadata

__all__ = [
    "DEMO_METADATA_KEY",
    "DETECTOR_FILE",
    "RECOGNIZER_FILE",
    "SWAPPER_FILE",
    "ModelMetadata",
    "NotAnOnnxModel",
    "build_detector",
    "build_recognizer",
    "build_swapper",
    "demo_face_colours",
    "draw_demo_face",
    "is_demo_model",
    "read_model_metadata",
    "write_demo_models",
]
