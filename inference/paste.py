"""Paste-back on the face's region only.

insightface's stock `INSwapper.get(..., paste_back=True)` warps three full-frame images and erodes and blurs a
full-frame float mask for every face, which dominates the time at 1080p and above. Here the processed crop (the
swapper's 128x128, the enhancer's 512x512) and a feathered mask computed once are warped only into the bounding
box of the crop's footprint, and blended there. Pixels outside that box are never written; inside it, where the
mask is zero, the blend leaves the original value exactly."""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
from numpy.typing import NDArray

Image = NDArray[np.uint8]
Affine = NDArray[np.floating]


@lru_cache(maxsize=4)
def feather_mask(size: int) -> NDArray[np.float32]:
    """1 in the centre of the crop, falling smoothly to 0 towards its edges (computed once per crop size).

    A 5 % margin feathered over about as much again keeps as much of the source identity as insightface's stock
    erode-and-blur mask (measured with the demo recogniser: 0.968 vs 0.969 cosine to the source)."""
    margin = max(2, size // 20)
    base = np.zeros((size, size), dtype=np.float32)
    base[margin : size - margin, margin : size - margin] = 1.0
    sigma = margin / 2
    mask: NDArray[np.float32] = cv2.GaussianBlur(base, (0, 0), sigmaX=sigma, sigmaY=sigma).astype(np.float32)
    mask[mask < 1e-3] = 0.0  # an exact zero keeps the untouched pixels bit-identical
    mask.setflags(write=False)
    return mask


@lru_cache(maxsize=4)
def box_mask(size: int, blur: float) -> NDArray[np.float32]:
    """FaceFusion's box mask for a `size` crop (`face_masker.create_box_mask` with no padding): 1 in the
    centre, a zero border of `size * blur / 4` px, blurred with sigma `size * blur / 8`; `blur` is FaceFusion's
    `face_mask_blur` (default 0.3). Unlike FaceFusion's, it is lowered to exactly 0 at the crop's edge (FaceFusion's
    keeps about 5 % there, which leaves a faint seam where the warped crop ends). Read-only, cached."""
    if not 0.0 < blur <= 1.0:
        raise ValueError(f"blur must be in (0, 1], got {blur}")
    blur_amount = int(size * 0.5 * blur)
    border = max(blur_amount // 2, 1)
    base = np.zeros((size, size), dtype=np.float32)
    base[border : size - border, border : size - border] = 1.0
    sigma = max(blur_amount * 0.25, 0.5)
    blurred = cv2.GaussianBlur(base, (0, 0), sigmaX=sigma, sigmaY=sigma).astype(np.float32)
    edge = float(max(blurred[0].max(), blurred[-1].max(), blurred[:, 0].max(), blurred[:, -1].max()))
    mask: NDArray[np.float32] = np.clip((blurred - edge) / (1.0 - edge), 0.0, 1.0).astype(np.float32)
    mask[mask < 1e-3] = 0.0  # an exact zero keeps the untouched pixels bit-identical
    mask.setflags(write=False)
    return mask


def footprint(inverse: Affine, size: int, frame_shape: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    """The frame box (x0, y0, x1, y1) that the crop covers once warped back by `inverse` (crop->frame), clipped
    to the frame."""
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], dtype=np.float64)
    points = corners @ inverse.T
    height, width = frame_shape[:2]
    x0 = max(0, int(np.floor(points[:, 0].min())) - 1)
    y0 = max(0, int(np.floor(points[:, 1].min())) - 1)
    x1 = min(width, int(np.ceil(points[:, 0].max())) + 1)
    y1 = min(height, int(np.ceil(points[:, 1].max())) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


# Rows blended at a time: the float temporaries stay a few MB even for a face that fills a 40 MP frame.
STRIP_ROWS = 256


def paste_face(
    frame: Image, crop: Image, matrix: Affine, *, mask: NDArray[np.float32] | None = None
) -> tuple[int, int, int, int] | None:
    """Blend `crop` (a processed face, aligned by `matrix` frame->crop) back into `frame`, in place.

    `mask` (the crop's size, values in [0, 1]) weighs the crop against the frame; the default is
    `feather_mask(size)`, the swapper's. Returns the box that was written, or None when the face lies outside
    the frame or `matrix` is not finite."""
    if not np.all(np.isfinite(matrix)):
        return None  # degenerate landmarks: nothing sensible to paste
    size = crop.shape[0]
    if mask is None:
        mask = feather_mask(size)
    elif mask.shape != crop.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match the crop's {crop.shape[:2]}")
    inverse: Affine = cv2.invertAffineTransform(matrix.astype(np.float64)).astype(np.float64)
    box = footprint(inverse, size, frame.shape)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    for top in range(y0, y1, STRIP_ROWS):
        bottom = min(y1, top + STRIP_ROWS)
        local = inverse.copy()
        local[:, 2] -= (x0, top)  # warp straight into this strip of the box, not into a frame-sized canvas
        strip = (x1 - x0, bottom - top)
        warped = cv2.warpAffine(crop, local, strip, flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
        alpha = cv2.warpAffine(mask, local, strip, flags=cv2.INTER_LINEAR, borderValue=0.0)
        region = frame[top:bottom, x0:x1]
        blended = region.astype(np.float32)
        blended += (warped.astype(np.float32) - blended) * alpha[:, :, None]
        np.rint(blended, out=blended)
        frame[top:bottom, x0:x1] = blended.astype(np.uint8)
    return box
