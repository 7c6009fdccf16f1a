"""Fixtures for the engine's tests: demo models generated per test run, no network.

insightface downloads a model pack whenever `FaceAnalysis`/`get_model` is given a *name* that is not an existing
directory or file; these tests always pass paths, and `_block_network` (autouse, per module, so it never leaks into
other test directories sharing the worker) turns any attempt to reach a host into `NetworkAccessBlocked`."""

from __future__ import annotations

import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inference.models import write_demo_models

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "", None}


class NetworkAccessBlocked(RuntimeError):
    """A test in tests/inference tried to reach a host."""


@pytest.fixture(scope="module", autouse=True)
def _block_network() -> Iterator[None]:
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in LOCAL_HOSTS:
            raise NetworkAccessBlocked(f"tests/inference must not resolve {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOCAL_HOSTS:
            raise NetworkAccessBlocked(f"tests/inference must not connect to {address!r}")
        real_connect(self, address)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", getaddrinfo)
        patch.setattr(socket.socket, "connect", connect)
        yield


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo models: detector and recogniser in `<tmp>/pack` (a FaceAnalysis directory), swapper apart."""
    root = tmp_path_factory.mktemp("demo_models")
    return write_demo_models(root / "pack", seed=0, swapper_directory=root / "swapper")


@pytest.fixture(scope="module")
def face_app(_block_network: None, demo_models: dict[str, Path]) -> Any:
    """insightface's own FaceAnalysis on the demo pack, CPU, one detection pass at 640x640."""
    from insightface.app import FaceAnalysis

    app = FaceAnalysis(
        name=str(demo_models["detection"].parent),
        allowed_modules=["detection", "recognition"],
        providers=["CPUExecutionProvider"],
    )
    app.prepare(ctx_id=-1, det_size=(640, 640))
    return app


@pytest.fixture(scope="module")
def swapper(_block_network: None, demo_models: dict[str, Path]) -> Any:
    """insightface's INSwapper on the demo swapper (its load prints `inswapper-shape: ...`)."""
    from insightface.model_zoo import get_model

    return get_model(str(demo_models["swapper"]), providers=["CPUExecutionProvider"])


@pytest.fixture(autouse=True)
def _quiet_skimage() -> Iterator[None]:
    # scikit-image 0.26 deprecates SimilarityTransform.estimate, which insightface's face_align calls on every
    # alignment (removal planned for 2.2, hence the <2.2 pin).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*estimate.*is deprecated", category=FutureWarning)
        yield
