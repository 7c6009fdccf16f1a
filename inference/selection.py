"""Which target faces a swap changes; parsed at submit time by the API, so it is kept free of the models."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from inference.errors import InvalidFaceSelection


class FaceMode(StrEnum):
    largest = "largest"
    all = "all"
    index = "index"  # type: ignore[assignment]  # a member named like str.index, on purpose: it is the API word
    reference = "reference"


_INDEX_SELECTION = re.compile(r"index:(\d{1,3}(?:,\d{1,3}){0,63})")


@dataclass(frozen=True, slots=True)
class FaceSelection:
    """Which target faces to swap. `index:i,j` counts faces left to right (then top to bottom), from 0."""

    mode: FaceMode = FaceMode.largest
    indices: tuple[int, ...] = ()
    threshold: float = 0.5

    @classmethod
    def parse(cls, text: str, *, threshold: float = 0.5) -> FaceSelection:
        value = text.strip().lower()
        if not 0.0 <= threshold <= 1.0:
            raise InvalidFaceSelection("the reference threshold is a cosine similarity between 0 and 1")
        if value in (FaceMode.largest, FaceMode.all, FaceMode.reference):
            return cls(mode=FaceMode(value), threshold=threshold)
        match = _INDEX_SELECTION.fullmatch(value)
        if match:
            indices = tuple(dict.fromkeys(int(i) for i in match.group(1).split(",")))
            return cls(mode=FaceMode.index, indices=indices, threshold=threshold)
        raise InvalidFaceSelection(
            f"unknown face selection {text!r}: use largest, all, index:i,j or reference", selection=text[:100]
        )
