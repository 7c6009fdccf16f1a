"""The runtime check behind `python -m inference.install`."""

from __future__ import annotations

from inference.install import environment_problems, main

GOOD = {
    "insightface": "2.1",
    "onnxruntime": "1.31.1",
    "onnx": "1.23.2",
    "opencv-python-headless": "5.0.0.93",
    "numpy": "2.4.6",
    "scipy": "1.17.1",
    "scikit-image": "0.26.0",
    "requests": "2.34.2",
    "tqdm": "4.70.1",
}


def test_a_good_environment_has_no_problems() -> None:
    assert environment_problems(GOOD.get) == []
    gpu = dict(GOOD, **{"onnxruntime-gpu": "1.31.1"})
    del gpu["onnxruntime"]
    assert environment_problems(gpu.get) == []


def test_conflicts_are_reported() -> None:
    both = dict(GOOD, **{"onnxruntime-gpu": "1.31.1", "opencv-python": "4.12.0", "scikit-image": "2.2.0"})
    del both["tqdm"]
    problems = environment_problems(both.get)
    assert len(problems) == 4
    assert any("exactly one of onnxruntime, onnxruntime-gpu" in p for p in problems)
    assert any(p.startswith("opencv-python (GUI OpenCV)") for p in problems)
    assert any(p.startswith("scikit-image 2.2.0") for p in problems)
    assert "tqdm is not installed" in problems
    old = dict(GOOD, insightface="0.7.3")
    assert environment_problems(old.get) == ["insightface 2.1 is required, found 0.7.3"]


def test_this_environment_passes_the_check() -> None:
    assert main(["--check"]) == 0
