"""`parse_processors`: what a caller may ask for, in which order it runs, and each refusal."""

from __future__ import annotations

from typing import Any

import pytest

from inference.errors import InvalidProcessors, ProcessorUnavailable
from inference.processors import DEFAULT_PROCESSORS, FACE_ENHANCER, FACE_SWAPPER, PROCESSORS, parse_processors

BOTH = (FACE_SWAPPER, FACE_ENHANCER)


def test_names_are_facefusions() -> None:
    assert (FACE_SWAPPER, FACE_ENHANCER) == ("face_swapper", "face_enhancer")
    assert PROCESSORS == BOTH
    assert DEFAULT_PROCESSORS == (FACE_SWAPPER,)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("face_swapper", (FACE_SWAPPER,)),
        ("face_swapper,face_enhancer", BOTH),
        ("face_enhancer,face_swapper", BOTH),  # pipeline order, whatever order was written
        ("  Face_Swapper , FACE_ENHANCER  ", BOTH),
        (["face_swapper"], (FACE_SWAPPER,)),
        (["face_enhancer", "face_swapper"], BOTH),
        (("face_swapper", " face_enhancer "), BOTH),
        (["face_swapper,face_enhancer"], BOTH),  # one form field holding the comma-separated list
    ],
)
def test_accepted(text: Any, expected: tuple[str, ...]) -> None:
    assert parse_processors(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty processor name"),
        ("   ", "empty processor name"),
        ([], "must include face_swapper"),
        ("face_swapper,", "empty processor name"),
        ("face_swapper,,face_enhancer", "empty processor name"),
        (["face_swapper", ""], "empty processor name"),
        ("face_enhancer", "must include face_swapper"),
        (["face_enhancer"], "must include face_swapper"),
        ("face_swapper,frame_enhancer", "unknown processor 'frame_enhancer'"),
        ("face-swapper", "unknown processor 'face-swapper'"),
        ("face_swapper,face_swapper", "face_swapper given more than once"),
        ("face_swapper, FACE_SWAPPER", "face_swapper given more than once"),
        (["face_swapper", "face_enhancer", "face_enhancer"], "face_enhancer given more than once"),
        ([1], "must be strings, got int"),
        (["face_swapper", None], "must be strings, got NoneType"),
        (b"face_swapper", "comma-separated string or a list"),
        ({"face_swapper": 1}, "comma-separated string or a list"),
    ],
)
def test_refused(text: Any, message: str) -> None:
    with pytest.raises(InvalidProcessors, match=message) as refused:
        parse_processors(text)
    error = refused.value
    assert (error.status_code, error.code, error.input_error) == (422, "invalid_processors", True)


def test_an_unknown_name_is_echoed_shortened() -> None:
    with pytest.raises(InvalidProcessors) as refused:
        parse_processors("face_swapper," + "x" * 10_000)
    assert len(refused.value.detail) < 200
    assert refused.value.extra["unknown"] == ["x" * 40 + "..."]
    assert refused.value.extra["allowed"] == list(PROCESSORS)


def test_processor_unavailable_is_not_the_callers_fault() -> None:
    error = ProcessorUnavailable("the face enhancer model is not installed")
    assert (error.status_code, error.code, error.input_error) == (503, "processor_unavailable", False)
