"""The real model files the engine runs on: where to download them, their size and SHA-256, and their licence.

LICENCE: the three files are InsightFace's pretrained models (SCRFD `det_10g.onnx` and ArcFace `w600k_r50.onnx`
from the `buffalo_l` pack, and `inswapper_128.onnx`). InsightFace publishes the library code under MIT, but its
pretrained models "are available for non-commercial research purposes only, including both auto-downloading models
and manual-downloading models" (https://github.com/deepinsight/insightface/tree/master/python-package#license).
Running them behind a paid API is commercial use: a production deployment needs a licence from InsightFace or
other weights. Every `ModelFile` carries that licence, and `fetch_models` logs it for every file it downloads.

Provenance of `REAL_MODELS` (no download was possible where this was written, so nothing here was hashed by us;
every value was read from public sources, listed next to each entry; no value is typed from memory):

* SHA-256 of all three: the "Models Hashsum" section of Gourieff/ComfyUI-ReActor's README.md (it also gives
  MD5s), repeated verbatim in the Russian README of the same project and in several independent download
  scripts and manifests found by content search (public GitHub code) that pin the same digests.
* sizes: no file host's page was readable from here; the sizes come from third-party manifests found by content
  search, which pair each size with the same SHA-256 (at least two independent ones per file, see below).
* URLs: InsightFace itself ships `det_10g.onnx` and `w600k_r50.onnx` only inside
  https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip (this fetcher does not unpack
  zips) and no longer hosts `inswapper_128.onnx` at all (deepinsight/insightface#2315; mirrors such as
  huggingface.co/henryruhs/roop and huggingface.co/deepinsight/inswapper have disappeared since). The URLs below
  are the mirrors most widely used in public code, each paired with these digests by at least one source.
  Mirrors come and go: `fetch_models` refuses any file whose size or SHA-256 differ, and a deployment can point
  at its own mirror with `load_manifest` (a JSON file with the same fields).

Not confirmed: whether the bytes at each URL *today* still hash to the recorded digest (checked the first time
`fetch_models` runs against the real hosts); sizes are confirmed only by third-party manifests, never by a host.

`OPTIONAL_MODELS` holds the face enhancer (GFPGAN 1.4, `gfpgan_1.4.onnx`): the engine runs without it and
refuses `face_enhancer` requests while it is absent, so it is not part of `REAL_MODELS` (what `facemint models
fetch`, `verify` and `doctor` require). LICENCE: see `GFPGAN_LICENCE`; it is not InsightFace's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import urlsplit

INSIGHTFACE_LICENCE = (
    "InsightFace pretrained model: non-commercial research purposes only "
    "(https://github.com/deepinsight/insightface/tree/master/python-package#license)"
)

# From TencentARC/GFPGAN @ 7552a779 (the newest commit, April 2024): README.md says only "GFPGAN is released under
# Apache License Version 2.0"; LICENSE says Apache-2.0 "except for the third-party components listed below", which
# lists StyleGAN2 (code modified from stylegan2-pytorch, "here is the NVIDIA license": its section 3.3 allows
# non-commercial use only, "research or evaluation purposes only") and DFDNet (CC BY-NC-SA 4.0). No licence is
# stated for the released weights themselves; the README's training recipe uses FFHQ and an FFHQ-trained StyleGAN2.
# FaceFusion's model list labels its ONNX export "Apache-2.0".
GFPGAN_LICENCE = (
    "GFPGAN 1.4 (TencentARC), ONNX export by FaceFusion: code Apache-2.0 except third-party parts (StyleGAN2 under "
    "NVIDIA's licence, non-commercial: research or evaluation only; DFDNet under CC BY-NC-SA 4.0); no separate "
    "licence for the weights, trained on FFHQ. Commercial use not established "
    "(https://github.com/TencentARC/GFPGAN/blob/master/LICENSE)"
)

_SHA256 = re.compile(r"[0-9a-f]{64}")


class ManifestError(ValueError):
    """A manifest entry (or a manifest file) that is not a valid model description."""


@dataclass(frozen=True)
class ModelFile:
    """One downloadable model file: `name` is its role ("detector", "recognizer", "swapper", "enhancer"), `file`
    the file name it has on disk (a bare name, no directories), `sha256` its lowercase hex digest, `size` its
    length in bytes, `url` where to download it (http or https) and `licence` the terms it comes under."""

    name: str
    file: str
    sha256: str
    size: int
    url: str
    licence: str

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name == "size":
                if type(value) is not int or value <= 0:
                    raise ManifestError(f"size must be a positive integer number of bytes, got {value!r}")
            elif not isinstance(value, str) or not value.strip():
                raise ManifestError(f"{field.name} must be a non-empty string, got {value!r}")
        if not _SHA256.fullmatch(self.sha256):
            raise ManifestError(f"sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        if (
            self.file in (".", "..")
            or PurePosixPath(self.file).name != self.file
            or PureWindowsPath(self.file).name != self.file
            or "\x00" in self.file
            or self.file.endswith(".part")  # the fetcher's resume files are <file>.part
        ):
            raise ManifestError(f"file must be a bare file name (not *.part), got {self.file!r}")
        try:
            parts = urlsplit(self.url)
        except ValueError as exc:
            raise ManifestError(f"url is not a URL: {self.url!r}") from exc
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ManifestError(f"url must be an absolute http(s) URL, got {self.url!r}")


REAL_MODELS: tuple[ModelFile, ...] = (
    # SCRFD-10GF with 5 keypoints, from InsightFace's buffalo_l pack.
    # sha256: ComfyUI-ReActor README "Models Hashsum" (det_10g.onnx); the same digest is paired with this exact
    #   URL by a download script that checks it (`base=.../models/buffalo_l`, `DET_SHA=...`) and by a model
    #   registry that records it as the host's own LFS digest of this URL.
    # size: 16,923,827 bytes in at least four independent manifests, each with the same digest (a Deep-Live-Cam
    #   derived `ModelSpec` list, that model registry, a buffalo_l checker script, a buffalo_l file table).
    # url: Hugging Face mirror `public-data/insightface` of the buffalo_l files, the most used in public code.
    ModelFile(
        name="detector",
        file="det_10g.onnx",
        sha256="5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91",
        size=16_923_827,
        url="https://huggingface.co/public-data/insightface/resolve/main/models/buffalo_l/det_10g.onnx",
        licence=INSIGHTFACE_LICENCE,
    ),
    # ArcFace ResNet-50 trained on WebFace600K, from InsightFace's buffalo_l pack.
    # sha256: ComfyUI-ReActor README "Models Hashsum" (w600k_r50.onnx); the same digest is paired with this exact
    #   URL by the download script above, and with other mirrors (immich-app/buffalo_l, deepghs/insightface).
    # size: 174,383,860 bytes in at least four independent manifests with the same digest (immich-app/buffalo_l
    #   recognition/model.onnx, deepghs/insightface buffalo_l, a buffalo_l checker script, a buffalo_l table).
    #   Not to be confused with FaceFusion's re-export `arcface_w600k_r50.onnx` (174,388,474 bytes, other digest).
    ModelFile(
        name="recognizer",
        file="w600k_r50.onnx",
        sha256="4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43",
        size=174_383_860,
        url="https://huggingface.co/public-data/insightface/resolve/main/models/buffalo_l/w600k_r50.onnx",
        licence=INSIGHTFACE_LICENCE,
    ),
    # INSwapper 128 (fp32). InsightFace published no checksum for it (deepinsight/insightface#2315).
    # sha256: ComfyUI-ReActor README "Models Hashsum" (inswapper_128.onnx, MD5 a3a155b90354160350efd66fed6b3d80);
    #   the same digest is paired with this exact URL by a download script that checks it, with
    #   huggingface.co/ezioruan/inswapper_128.onnx at revision 6ffdf0e83c5996cc425e77b59913fc48d79441be by two
    #   others, and with huggingface.co/hacksider/deep-live-cam at revision 581e70b6... by a manifest.
    # size: 554,253,681 bytes in at least three independent manifests with the same digest.
    # url: FaceFusion's asset release (the file ReActor's README links as the original and its troubleshooting
    #   section recommends); alternatives with the same digest: the two pinned Hugging Face revisions above.
    ModelFile(
        name="swapper",
        file="inswapper_128.onnx",
        sha256="e4a3f08c753cb72d04e10aa0f7dbe3deebbf39567d4ead6dce08e98aa49e16af",
        size=554_253_681,
        url="https://github.com/facefusion/facefusion-assets/releases/download/models/inswapper_128.onnx",
        licence=INSIGHTFACE_LICENCE,
    ),
)


OPTIONAL_MODELS: tuple[ModelFile, ...] = (
    # GFPGAN 1.4 as FaceFusion exports it (model `gfpgan_1.4` of its face_enhancer, asset release models-3.0.0).
    # FaceFusion itself pins only a CRC32 (`gfpgan_1.4.hash`, downloaded next to the file), no SHA-256.
    # sha256: paired with this exact URL by three independent pieces of public code found by content search (a
    #   model registry and a download module, each listing this URL and its Hugging Face twin
    #   huggingface.co/facefusion/models-3.0.0/resolve/main/gfpgan_1.4.onnx with the one digest, and a model
    #   catalogue tuple); a fourth project re-hosts the file under its own release with the same digest.
    # size: 340,299,087 bytes in at least three independent manifests with the same digest (two JS model lists for
    #   the Hugging Face twin, a Python mirror list for facefusion/models-3.0.0), and in a parity document's table
    #   of the files its FaceFusion 3.7.1 reference run used.
    # url: FaceFusion's own download path (`resolve_download_url('models-3.0.0', 'gfpgan_1.4.onnx')` with its
    #   github provider); the Hugging Face twin above is its other provider.
    # Not confirmed against either host: the file was not downloaded or hashed here.
    ModelFile(
        name="enhancer",
        file="gfpgan_1.4.onnx",
        sha256="accc4757b26bdb89b32b4d3500d4f79c9dff97c1dd7c7104bf9dcb95e3311385",
        size=340_299_087,
        url="https://github.com/facefusion/facefusion-assets/releases/download/models-3.0.0/gfpgan_1.4.onnx",
        licence=GFPGAN_LICENCE,
    ),
)


_FIELDS = tuple(field.name for field in fields(ModelFile))


def model_from_mapping(entry: Mapping[str, Any]) -> ModelFile:
    """A `ModelFile` from a mapping with exactly its six fields (keys starting with "_" are comments and ignored;
    the digest may be upper case). Raises `ManifestError` for a missing, unknown or invalid field."""
    if not isinstance(entry, Mapping):
        raise ManifestError(f"a manifest entry must be an object, got {type(entry).__name__}")
    keys = {key for key in entry if not (isinstance(key, str) and key.startswith("_"))}
    missing = [name for name in _FIELDS if name not in keys]
    unknown = sorted(str(key) for key in keys - set(_FIELDS))
    if missing or unknown:
        problems = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown {', '.join(unknown)}"] if unknown else []
        )
        raise ManifestError(f"manifest entry {entry.get('file', entry.get('name', '?'))!r}: {'; '.join(problems)}")
    values = {name: entry[name] for name in _FIELDS}
    if isinstance(values["sha256"], str):
        values["sha256"] = values["sha256"].strip().lower()  # `sha256sum` is lowercase, `Get-FileHash` uppercase
    try:
        return ModelFile(**values)
    except ManifestError as exc:
        raise ManifestError(f"manifest entry {entry.get('file', entry.get('name', '?'))!r}: {exc}") from None


def model_to_mapping(model: ModelFile) -> dict[str, Any]:
    """The JSON-ready mapping `load_manifest` reads back."""
    return {name: getattr(model, name) for name in _FIELDS}


def load_manifest(path: Path | str) -> tuple[ModelFile, ...]:
    """Read model files from a JSON manifest, so that a deployment (or a test) can use its own mirror.

    The file holds either a list of entries or an object `{"models": [...]}`; each entry has exactly the fields
    of `ModelFile` (`name`, `file`, `sha256`, `size`, `url`, `licence`; keys starting with "_" are comments).
    File names and roles must be unique. Raises `ManifestError` for anything malformed and `OSError` when the
    file cannot be read."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON: {exc}") from None
    entries = document.get("models") if isinstance(document, dict) else document
    if not isinstance(entries, list):
        raise ManifestError(f"{path}: expected a list of models or an object with a 'models' list")
    models = tuple(model_from_mapping(entry) for entry in entries)
    for attribute in ("file", "name"):
        seen: set[str] = set()
        for model in models:
            value = getattr(model, attribute)
            if value in seen:
                raise ManifestError(f"{path}: duplicate {attribute} {value!r}")
            seen.add(value)
    return models
