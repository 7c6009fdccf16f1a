"""The processors a swap runs, as FaceFusion names them: `face_swapper` (always) and `face_enhancer` (optional,
GFPGAN 1.4 on the swapped faces).

`parse_processors` turns what a caller sent (a comma-separated string, or a list of names) into the pipeline,
in the order the engine runs it, whatever order the caller wrote."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from inference.errors import InvalidProcessors

FACE_SWAPPER: Final = "face_swapper"
FACE_ENHANCER: Final = "face_enhancer"

PROCESSORS: Final = (FACE_SWAPPER, FACE_ENHANCER)
"""Every processor, in pipeline order: the enhancer restores the face the swapper pasted."""

DEFAULT_PROCESSORS: Final = (FACE_SWAPPER,)

# Longer names are cut in error messages: the caller's text is echoed back, never at any length.
_SHOWN_CHARS = 40


def _shown(name: str) -> str:
    return name if len(name) <= _SHOWN_CHARS else name[:_SHOWN_CHARS] + "..."


def parse_processors(text: str | Sequence[str]) -> tuple[str, ...]:
    """The processors named by `text`, in pipeline order (`face_swapper`, then `face_enhancer`).

    `text` is a comma-separated string ("face_swapper,face_enhancer") or a sequence of names (each of which may
    itself be comma-separated). Names are trimmed and lower-cased. Raises `InvalidProcessors` for an empty name,
    an unknown name, a name given twice, a non-string item, or a list without `face_swapper` (every pipeline
    swaps; the enhancer alone is not offered)."""
    items: Sequence[object] = [text] if isinstance(text, str) else text
    if isinstance(items, (bytes, bytearray)) or not isinstance(items, Sequence):
        raise InvalidProcessors("processors must be a comma-separated string or a list of names")
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise InvalidProcessors(f"processor names must be strings, got {type(item).__name__}")
        names.extend(part.strip().lower() for part in item.split(","))
    allowed = ", ".join(PROCESSORS)
    if any(not name for name in names):
        raise InvalidProcessors(
            f"empty processor name: give a comma-separated list of {allowed}", allowed=list(PROCESSORS)
        )
    unknown = [name for name in dict.fromkeys(names) if name not in PROCESSORS]
    if unknown:
        shown = ", ".join(repr(_shown(name)) for name in unknown[:5])
        raise InvalidProcessors(
            f"unknown processor {shown}: the processors are {allowed}",
            unknown=[_shown(name) for name in unknown[:5]],
            allowed=list(PROCESSORS),
        )
    repeated = sorted({name for name in names if names.count(name) > 1}, key=PROCESSORS.index)
    if repeated:
        raise InvalidProcessors(f"processor {', '.join(repeated)} given more than once", repeated=repeated)
    if FACE_SWAPPER not in names:
        raise InvalidProcessors(f"the processors must include {FACE_SWAPPER}", allowed=list(PROCESSORS))
    return tuple(name for name in PROCESSORS if name in names)
