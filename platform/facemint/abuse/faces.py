"""A source face's hash for `same_face_per_window`: sign-random-projection LSH of the normalised embedding.

`BANDS` bands of `BITS` bits each; bit i of the face is which side of a fixed random hyperplane its embedding lies
on. Two embeddings at angle theta agree on a bit with probability 1 - theta/pi, so on a whole band with
(1 - theta/pi)^BITS: a re-encoded or resized copy of the same photo (cosine above 0.99) keeps most bands, and a
different face (near-orthogonal embeddings) shares a band with probability about BANDS / 2^BITS. A face is
counted under each of its bands and its count is the largest (`facemint.abuse.counters.check_face`), so one band
surviving every copy is enough for the copies to be counted together.

Measured on the demo models (tests/jobs/test_abuse_faces.py, and a wider sweep over five seeds while choosing 16
bands of 24 bits): 10 copies of each of 40 faces (PNG, JPEG at quality 95 to 40, resized up and down, moved in the
frame, drawn larger) keep at least one band common to all ten, for every face and seed; 300 distinct faces share a
band in 0 to 1 pairs of 44,850 (8 bands of 20 bits: a copy lost its band for 1 or 2 faces in 40, and 1 to 3 pairs
collided). A pair that collides counts as 2 in that band, so distinct faces trigger a rule only if `max_jobs` + 1
of them share one band. It catches the same photo and its near copies, not the same person across different
photos: those embeddings are much further apart (cosine about 0.5 to 0.8 with the real recogniser), beyond what a
hash meant to keep false positives near zero should join. Not measured on the real ArcFace model (no weights here).

The hyperplanes are generated from a fixed seed, so every worker (and every release) hashes alike; changing
`SEED`, `BANDS` or `BITS` only restarts the counts."""

from __future__ import annotations

import functools

import numpy as np
from numpy.typing import ArrayLike, NDArray

BANDS = 16
BITS = 24
SEED = 0xFACE5EED


@functools.cache
def _planes(dimension: int) -> NDArray[np.float32]:
    return np.random.default_rng(SEED).standard_normal((dimension, BANDS * BITS)).astype(np.float32)


def face_bands(embedding: ArrayLike) -> list[str]:
    """The face's `BANDS` band hashes (`BITS` bits each, as hex). Any length of embedding is hashed (512 for
    ArcFace); a zero embedding (no face) is refused."""
    vector = np.asarray(embedding, dtype=np.float32).ravel()
    norm = float(np.linalg.norm(vector))
    if not vector.size or not np.isfinite(norm) or norm == 0.0:
        raise ValueError("a face embedding must be a finite, non-zero vector")
    bits = (vector / norm) @ _planes(vector.size) > 0
    weights = 1 << np.arange(BITS, dtype=np.int64)
    return [format(int(bits[b * BITS : (b + 1) * BITS] @ weights), "06x") for b in range(BANDS)]
