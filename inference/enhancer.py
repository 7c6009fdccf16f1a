"""The face enhancer: GFPGAN 1.4 (FaceFusion's `face_enhancer` processor, model `gfpgan_1.4`) on ONNX Runtime.

For each face: align the frame to FFHQ-512 from the face's 5 landmarks, run the model on the 512x512 crop, and
blend the restored crop back onto the face's region only, in place (`inference.paste.paste_face`).

The contract, as FaceFusion 3.8 runs this model (facefusion/facefusion @ 33cc6b40,
`processors/modules/face_enhancer/core.py`, `face_helper.py`, `face_masker.py`):

* model: one input `[1, 3, 512, 512]` float32 and one output of the same shape (`'size': (512, 512)`);
* alignment: template `ffhq_512` (`WARP_TEMPLATE_SET`, five points in units of the crop, times 512), a
  similarity transform fitted to the 5 landmarks (FaceFusion: `cv2.estimateAffinePartial2D`, RANSAC with a
  100 px threshold, i.e. a least-squares fit over all five points; here the same fit in closed form), the
  crop warped with replicated borders (FaceFusion asks for `INTER_AREA`, which `warpAffine` runs as bilinear);
* input: BGR -> RGB, `/ 255`, `(x - 0.5) / 0.5`, HWC -> NCHW (`prepare_crop_frame`);
* output: clipped to [-1, 1], `(x + 1) / 2 * 255`, rounded, RGB -> BGR (`normalize_crop_frame`);
* paste: a box mask (`create_box_mask`, `face_mask_blur` 0.3, no padding) and then the enhanced frame blended
  over the original at `face_enhancer_blend` / 100 (default 80): here both in one step, the mask times 0.8.

`FaceEnhancer` is thread-safe: the ONNX Runtime session is, and every buffer is per call."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import cv2
import numpy as np
from numpy.typing import NDArray

from inference.errors import ModelContractError, ModelNotFound
from inference.models.demo import ENHANCER_FILE
from inference.paste import box_mask, paste_face
from inference.providers import ProviderSpec

__all__ = ["DEFAULT_BLEND", "ENHANCER_FILE", "ENHANCER_SIZE", "FFHQ_512", "MASK_BLUR", "FaceEnhancer", "align"]

logger = logging.getLogger("inference.enhancer")

ENHANCER_SIZE: Final = 512

# FaceFusion's WARP_TEMPLATE_SET['ffhq_512']: eyes, nose tip, mouth corners, in units of the crop's side.
FFHQ_512: Final = np.array(
    [
        [0.37691676, 0.46864664],
        [0.62285697, 0.46912813],
        [0.50123859, 0.61331904],
        [0.39308822, 0.72541100],
        [0.61150205, 0.72490465],
    ],
    dtype=np.float64,
)

DEFAULT_BLEND: Final = 0.8  # FaceFusion's --face-enhancer-blend default, 80 (%)
MASK_BLUR: Final = 0.3  # FaceFusion's --face-mask-blur default

# A similarity whose scale is outside this range maps the face to less than a pixel or a crop to more than a
# frame: the landmarks are degenerate (all in one point, or absurdly far apart).
_MIN_SCALE = 1e-3
_MAX_SCALE = 1e4

Box = tuple[int, int, int, int]


def align(kps: NDArray[np.floating], size: int = ENHANCER_SIZE) -> NDArray[np.float64] | None:
    """The 2x3 similarity (rotation, uniform scale, translation; no reflection) that maps the 5 landmarks `kps`
    (frame pixels, shape (5, 2)) onto the FFHQ-512 template in a `size` crop, by least squares (Umeyama), or None
    when the landmarks are degenerate (not finite, all in one point, or an absurd scale)."""
    points = np.asarray(kps, dtype=np.float64)
    if points.shape != (5, 2) or not np.all(np.isfinite(points)):
        return None
    target = FFHQ_512 * size
    src_mean, dst_mean = points.mean(axis=0), target.mean(axis=0)
    src, dst = points - src_mean, target - dst_mean
    variance = float((src**2).sum())
    if variance <= 1e-12:
        return None
    # For 2-D points a similarity is z -> (a + ib) z + t in complex form: a and b are the least-squares solution.
    a = float((src * dst).sum()) / variance
    b = float((src[:, 0] * dst[:, 1] - src[:, 1] * dst[:, 0]).sum()) / variance
    scale = float(np.hypot(a, b))
    if not _MIN_SCALE <= scale <= _MAX_SCALE:
        return None
    rotation = np.array([[a, -b], [b, a]])
    translation = dst_mean - rotation @ src_mean
    return np.hstack([rotation, translation[:, None]])


def _session_contract_problem(session: Any) -> str | None:
    """Why the session is not GFPGAN 1.4's contract, or None when it is."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        return f"expected one input and one output, got {len(inputs)} and {len(outputs)}"
    for kind, value in (("input", inputs[0]), ("output", outputs[0])):
        if value.type != "tensor(float)":
            return f"its {kind} {value.name!r} is {value.type}, expected tensor(float)"
        shape = list(value.shape)
        # The batch may be symbolic (other exports); the rest must be fixed: 3 x 512 x 512.
        batch_ok = len(shape) == 4 and (shape[0] == 1 or not isinstance(shape[0], int))
        if not batch_ok or shape[1:] != [3, ENHANCER_SIZE, ENHANCER_SIZE]:
            return f"its {kind} {value.name!r} has shape {shape}, expected [1, 3, {ENHANCER_SIZE}, {ENHANCER_SIZE}]"
    return None


class FaceEnhancer:
    """GFPGAN 1.4 on one ONNX Runtime session. Use `FaceEnhancer.load(path, providers=..., sess_options=...)`;
    one instance per process, shared by threads."""

    def __init__(self, session: Any, *, path: Path, blend: float = DEFAULT_BLEND) -> None:
        if not 0.0 <= blend <= 1.0:
            raise ValueError(f"blend must be in [0, 1], got {blend}")
        problem = _session_contract_problem(session)
        if problem is not None:
            raise ModelContractError(f"{path.name} is not a GFPGAN 1.4 face enhancer: {problem}", model="enhancer")
        self.session = session
        self.path = path
        self.blend = blend
        self._input = session.get_inputs()[0].name
        # The paste weight: FaceFusion's box mask times its blend, in one read-only array.
        mask = (box_mask(ENHANCER_SIZE, MASK_BLUR) * np.float32(blend)).astype(np.float32)
        mask.setflags(write=False)
        self._mask = mask

    @classmethod
    def load(
        cls, path: Path, *, providers: Sequence[ProviderSpec], sess_options: Any = None, blend: float = DEFAULT_BLEND
    ) -> FaceEnhancer:
        """Open the model at `path` with these ONNX Runtime `providers` and `sess_options` and check its contract.

        `blend` is how much of the enhanced face replaces the original (FaceFusion's default, 0.8). Raises
        `ModelNotFound` when the file is missing and `ModelContractError` when it is not an ONNX model with
        GFPGAN 1.4's input and output (one `[1, 3, 512, 512]` float tensor each)."""
        import onnxruntime

        path = Path(path)
        if not path.is_file():
            raise ModelNotFound(f"enhancer model missing: {path}", missing=[str(path)])
        try:
            session = onnxruntime.InferenceSession(str(path), sess_options=sess_options, providers=list(providers))
        except Exception as exc:  # ONNX Runtime raises its own types for a corrupt or foreign file
            raise ModelContractError(
                f"{path.name} could not be loaded as an ONNX model: {type(exc).__name__}: {exc}"[:500],
                model="enhancer",
            ) from exc
        enhancer = cls(session, path=path, blend=blend)
        logger.debug("enhancer %s loaded on %s", path, ", ".join(session.get_providers()))
        return enhancer

    def warm_up(self) -> None:
        """Run the model once, so that the first request pays no lazy initialisation (cuDNN search, TensorRT)."""
        crop = np.random.default_rng(0).integers(0, 256, (ENHANCER_SIZE, ENHANCER_SIZE, 3), dtype=np.uint8)
        self._run(crop)

    def enhance(self, frame: NDArray[np.uint8], kps: NDArray[np.floating]) -> Box | None:
        """Enhance the face with landmarks `kps` (5x2, frame pixels) in `frame` (BGR uint8 HxWx3), in place.

        Only the aligned crop's footprint is written, weighted by the feathered mask (exactly 0 at the crop's
        edge, so everything outside it keeps its bytes). Returns the box (x0, y0, x1, y1) written, or None when
        the landmarks are degenerate or the face lies outside the frame (then nothing is written)."""
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError("frame must be a BGR uint8 array of shape (height, width, 3)")
        matrix = align(kps)
        if matrix is None:
            return None
        crop: NDArray[np.uint8] = cv2.warpAffine(
            frame,
            matrix,
            (ENHANCER_SIZE, ENHANCER_SIZE),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        ).astype(np.uint8, copy=False)
        return paste_face(frame, self._run(crop), matrix, mask=self._mask)

    def _run(self, crop: NDArray[np.uint8]) -> NDArray[np.uint8]:
        """The model on one BGR uint8 512x512 crop, normalised and denormalised as FaceFusion does."""
        rgb = crop[:, :, ::-1].astype(np.float32)
        tensor = np.ascontiguousarray((rgb / np.float32(127.5) - np.float32(1.0)).transpose(2, 0, 1)[None])
        output = np.asarray(self.session.run(None, {self._input: tensor})[0], dtype=np.float32)[0]
        restored = (np.clip(output, -1.0, 1.0) + 1.0) * np.float32(127.5)
        return np.ascontiguousarray(np.rint(restored).astype(np.uint8).transpose(1, 2, 0)[:, :, ::-1])
