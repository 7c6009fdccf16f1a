"""Install and check the engine's runtime: insightface 2.1 without its conflicting dependencies.

insightface 2.1 declares `onnxruntime` (CPU) and `opencv-python` (GUI) as hard dependencies. The engine wants
`opencv-python-headless` and, on GPU hosts, `onnxruntime-gpu` as the only ONNX Runtime: two ONNX Runtime
distributions in one environment leave only the CPU provider usable, and the two OpenCV builds overwrite each
other's `cv2`. So the project installs insightface with `--no-deps`, after its real runtime dependencies (onnx,
one onnxruntime flavour, opencv-python-headless, numpy, scipy, scikit-image<2.2, requests, tqdm).

    python -m inference.install          # install insightface==2.1 --no-deps if needed, then check
    python -m inference.install --check  # only check; exit 1 listing the problems

`pip check` always reports `insightface 2.1 requires opencv-python, which is not installed` (and, with
onnxruntime-gpu, the same for `onnxruntime`): that is the intended state, not a problem.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from collections.abc import Callable, Sequence
from importlib import metadata

INSIGHTFACE_VERSION = "2.1"
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")
GUI_OPENCV = ("opencv-python", "opencv-contrib-python")
REQUIRED = ("onnx", "opencv-python-headless", "numpy", "scipy", "scikit-image", "requests", "tqdm")


def installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _major_minor(version: str) -> tuple[int, int]:
    parts = (version.split(".") + ["0", "0"])[:2]
    numbers = []
    for part in parts:
        digits = "".join(ch for ch in part if ch.isdigit())
        numbers.append(int(digits) if digits else 0)
    return numbers[0], numbers[1]


def environment_problems(version_of: Callable[[str], str | None] = installed_version) -> list[str]:
    """What is wrong with the installed engine runtime (empty when it is right)."""
    problems = []
    insightface = version_of("insightface")
    if insightface != INSIGHTFACE_VERSION:
        problems.append(f"insightface {INSIGHTFACE_VERSION} is required, found {insightface or 'none'}")
    runtimes = [name for name in ORT_DISTRIBUTIONS if version_of(name)]
    if len(runtimes) != 1:
        problems.append(f"exactly one of {', '.join(ORT_DISTRIBUTIONS)} must be installed, found {runtimes or 'none'}")
    problems.extend(
        f"{name} (GUI OpenCV) is installed; uninstall it and keep opencv-python-headless"
        for name in GUI_OPENCV
        if version_of(name)
    )
    problems.extend(f"{name} is not installed" for name in REQUIRED if not version_of(name))
    skimage = version_of("scikit-image")
    if skimage and _major_minor(skimage) >= (2, 2):
        problems.append(
            f"scikit-image {skimage} removed SimilarityTransform.estimate, which insightface uses; use <2.2"
        )
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inference.install", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check the environment")
    args = parser.parse_args(argv)
    if not args.check and installed_version("insightface") != INSIGHTFACE_VERSION:
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            f"insightface=={INSIGHTFACE_VERSION}",
        ]
        subprocess.run(command, check=True)
        importlib.invalidate_caches()
    problems = environment_problems()
    for problem in problems:
        sys.stderr.write(f"inference runtime: {problem}\n")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
