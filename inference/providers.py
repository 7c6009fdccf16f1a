"""Execution providers: what to ask ONNX Runtime for, and proof that every session really got it.

ONNX Runtime falls back to the CPU silently when a GPU provider cannot load (missing CUDA libraries, an old
driver, or `onnxruntime` and `onnxruntime-gpu` installed together, which overwrite each other's files). So
after loading, the engine reads back the providers each session got and fails loudly when a GPU was asked for
and is not there."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from importlib import metadata
from pathlib import Path
from typing import Any

from inference.errors import ProviderUnavailable

logger = logging.getLogger("inference.providers")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
_ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")


class ProviderChoice(StrEnum):
    auto = "auto"
    cuda = "cuda"
    tensorrt = "tensorrt"
    cpu = "cpu"


ProviderSpec = str | tuple[str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class ProviderPlan:
    """What to request from ONNX Runtime, and which provider must come first in every session."""

    choice: ProviderChoice
    requested: tuple[ProviderSpec, ...]
    expected_primary: str
    reason: str


def available_providers() -> list[str]:
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def installed_runtimes() -> dict[str, str]:
    found = {}
    for name in _ORT_DISTRIBUTIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def plan(choice: ProviderChoice | str, *, cache_dir: Path | None = None) -> ProviderPlan:
    choice = ProviderChoice(choice)
    available = available_providers()
    if choice is ProviderChoice.cpu:
        return ProviderPlan(choice, (CPU,), CPU, "cpu was asked for")
    if choice is ProviderChoice.cuda:
        return ProviderPlan(choice, (CUDA, CPU), CUDA, "cuda was asked for")
    if choice is ProviderChoice.tensorrt:
        options: dict[str, Any] = {"trt_builder_optimization_level": 4}
        if cache_dir is not None:
            # Engines take minutes to build; cache them across restarts.
            options.update(
                trt_engine_cache_enable=True,
                trt_engine_cache_path=str(cache_dir),
                trt_timing_cache_enable=True,
                trt_timing_cache_path=str(cache_dir),
            )
        return ProviderPlan(choice, ((TENSORRT, options), CUDA, CPU), TENSORRT, "tensorrt was asked for")
    if CUDA in available:
        return ProviderPlan(choice, (CUDA, CPU), CUDA, "auto: onnxruntime lists CUDA")
    return ProviderPlan(choice, (CPU,), CPU, f"auto: no GPU provider listed (available: {', '.join(available)})")


def check_sessions(plan_: ProviderPlan, sessions: Iterable[tuple[str, Any]]) -> list[str]:
    """Every session's first active provider must be the planned one. Returns the active providers."""
    active: list[str] = []
    for name, session in sessions:
        got = list(session.get_providers())
        if not got or got[0] != plan_.expected_primary:
            raise ProviderUnavailable(
                f"{plan_.choice.value} was asked for, but the {name} model runs on {', '.join(got) or 'nothing'}: "
                + diagnose_gpu_failure(),
                model=name,
                active=got,
                requested=plan_.expected_primary,
            )
        for provider in got:
            if provider not in active:
                active.append(provider)
    return active


def diagnose_gpu_failure() -> str:
    """The most likely reason a GPU provider is not active, in one sentence."""
    runtimes = installed_runtimes()
    if len(runtimes) > 1:
        return (
            "onnxruntime and onnxruntime-gpu are both installed and overwrite each other's files; uninstall both, "
            "then install only onnxruntime-gpu (ORT=gpu make install)"
        )
    if "onnxruntime-gpu" not in runtimes:
        return (
            f"the CPU build of onnxruntime is installed ({runtimes.get('onnxruntime', 'none')}); "
            "install onnxruntime-gpu instead (ORT=gpu make install)"
        )
    if shutil.which("nvidia-smi") is None:
        return "onnxruntime-gpu is installed but no NVIDIA driver was found (nvidia-smi is missing)"
    return (
        f"onnxruntime-gpu {runtimes['onnxruntime-gpu']} is installed but its CUDA provider did not load: the CUDA "
        "and cuDNN libraries it was built for are missing, or the driver is too old for them (check nvidia-smi and "
        "the onnxruntime-gpu release notes)"
    )


def describe(requested: Sequence[ProviderSpec]) -> list[str]:
    return [spec if isinstance(spec, str) else spec[0] for spec in requested]
