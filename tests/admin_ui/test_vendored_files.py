"""The console's vendored browser files (admin_ui/static/vendor/) match their lock, VENDOR.lock: every locked file is
there with its SHA-256, nothing else is there, and each entry names its npm package, version and an allowed licence,
with the package's LICENSE file vendored beside it. scripts/vendor_js.py writes the files and the lock from the npm
registry; the tampering tests below show each check failing on a copy that breaks it."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENDOR_DIR = ROOT / "admin_ui" / "static" / "vendor"
LOCK_NAME = "VENDOR.lock"
# Permissive licences only: nothing the console ships may oblige its users to publish their own code.
ALLOWED_LICENCES = {"MIT", "0BSD", "BSD-2-Clause", "BSD-3-Clause", "ISC", "Apache-2.0"}
FIELDS = ("path", "package", "version", "licence", "tarball", "integrity", "sha256")

Entry = dict[str, Any]


def load_lock(vendor_dir: Path) -> list[Entry]:
    lock = json.loads((vendor_dir / LOCK_NAME).read_text())
    files = lock["files"]
    assert isinstance(files, list)
    return files


def hash_problems(vendor_dir: Path, entries: list[Entry]) -> list[str]:
    """Locked files that are missing, or whose SHA-256 is not the locked one."""
    problems = []
    for entry in entries:
        path = vendor_dir / str(entry.get("path"))
        if not path.is_file():
            problems.append(f"{entry.get('path')}: missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != entry.get("sha256"):
            problems.append(f"{entry.get('path')}: SHA-256 differs from the lock")
    return problems


def unlisted_files(vendor_dir: Path, entries: list[Entry]) -> list[str]:
    """Files under the vendor folder (the lock aside) that the lock does not name."""
    locked = {str(entry.get("path")) for entry in entries}
    present = {p.relative_to(vendor_dir).as_posix() for p in vendor_dir.rglob("*") if p.is_file() or p.is_symlink()}
    return sorted(present - locked - {LOCK_NAME})


def metadata_problems(entries: list[Entry]) -> list[str]:
    """Entries without a package, version, licence, tarball integrity or SHA-256; licences outside the allow-list;
    paths that are not plain relative ones; packages vendored without their LICENSE."""
    problems = []
    paths = [str(entry.get("path")) for entry in entries]
    if len(paths) != len(set(paths)):
        problems.append("a path is locked twice")
    for entry in entries:
        name = entry.get("path")
        for field in FIELDS:
            if not isinstance(entry.get(field), str) or not entry[field]:
                problems.append(f"{name}: no {field}")
        path = PurePosixPath(str(name))
        if path.is_absolute() or ".." in path.parts or str(path) != name:
            problems.append(f"{name}: not a plain path inside the vendor folder")
        if entry.get("licence") not in ALLOWED_LICENCES:
            problems.append(f"{name}: licence {entry.get('licence')!r} is not allowed")
        if not re.fullmatch(r"\d+\.\d+\.\d+", str(entry.get("version"))):
            problems.append(f"{name}: version {entry.get('version')!r} is not an exact one")
        if not re.fullmatch(r"sha512-[A-Za-z0-9+/]{86}==", str(entry.get("integrity"))):
            problems.append(f"{name}: integrity is not an npm sha512")
        if not re.fullmatch(r"[0-9a-f]{64}", str(entry.get("sha256"))):
            problems.append(f"{name}: sha256 is not a hex SHA-256")
    for package in sorted({str(entry.get("package")) for entry in entries}):
        mine = [entry for entry in entries if entry.get("package") == package]
        if f"{package}/LICENSE" not in paths:
            problems.append(f"{package}: its LICENSE is not vendored")
        if len({(entry.get("version"), entry.get("licence"), entry.get("integrity")) for entry in mine}) != 1:
            problems.append(f"{package}: its files disagree on version, licence or tarball")
        if any(not str(entry.get("path")).startswith(f"{package}/") for entry in mine):
            problems.append(f"{package}: a file lies outside {package}/")
    return problems


def all_problems(vendor_dir: Path) -> list[str]:
    entries = load_lock(vendor_dir)
    unlisted = [f"{path}: not in the lock" for path in unlisted_files(vendor_dir, entries)]
    return hash_problems(vendor_dir, entries) + unlisted + metadata_problems(entries)


# --- the committed files ----------------------------------------------------------------------------------


def test_every_locked_file_is_there_with_its_sha256() -> None:
    entries = load_lock(VENDOR_DIR)
    assert entries, "the lock names no files"
    assert hash_problems(VENDOR_DIR, entries) == []


def test_every_vendored_file_is_in_the_lock() -> None:
    assert unlisted_files(VENDOR_DIR, load_lock(VENDOR_DIR)) == []


def test_each_entry_names_its_package_version_and_an_allowed_licence() -> None:
    assert metadata_problems(load_lock(VENDOR_DIR)) == []


def test_the_console_has_htmx_2_and_uplot() -> None:
    versions = {(entry["path"], entry["version"].split(".")[0]) for entry in load_lock(VENDOR_DIR)}
    assert {("htmx.org/htmx.min.js", "2"), ("uplot/uPlot.iife.min.js", "1"), ("uplot/uPlot.min.css", "1")} <= versions


# --- each check fails when its rule is broken --------------------------------------------------------------


def _rewrite_lock(vendor_dir: Path, change: Callable[[list[Entry]], None]) -> None:
    lock = json.loads((vendor_dir / LOCK_NAME).read_text())
    change(lock["files"])
    (vendor_dir / LOCK_NAME).write_text(json.dumps(lock))


def _entry(entries: list[Entry], path: str) -> Entry:
    return next(entry for entry in entries if entry["path"] == path)


def _flip_a_byte(d: Path) -> None:
    path = d / "htmx.org" / "htmx.min.js"
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))


def _add_a_package(d: Path) -> None:
    (d / "alpinejs").mkdir()
    (d / "alpinejs" / "alpine.min.js").write_text("")


def _drop_a_licence_file(d: Path) -> None:
    _rewrite_lock(d, lambda entries: entries.remove(_entry(entries, "uplot/LICENSE")))
    (d / "uplot" / "LICENSE").unlink()


TAMPERINGS: dict[str, tuple[Callable[[Path], object], str]] = {
    "a changed byte": (_flip_a_byte, "htmx.org/htmx.min.js: SHA-256 differs from the lock"),
    "a deleted file": (lambda d: (d / "uplot" / "uPlot.min.css").unlink(), "uplot/uPlot.min.css: missing"),
    "an extra file": (lambda d: (d / "uplot" / "extra.js").write_text("alert(1)"), "uplot/extra.js: not in the lock"),
    "an extra package": (_add_a_package, "alpinejs/alpine.min.js: not in the lock"),
    "a GPL licence": (
        lambda d: _rewrite_lock(d, lambda e: _entry(e, "uplot/uPlot.min.css").update(licence="GPL-3.0-only")),
        "uplot/uPlot.min.css: licence 'GPL-3.0-only' is not allowed",
    ),
    "no licence": (
        lambda d: _rewrite_lock(d, lambda e: _entry(e, "uplot/uPlot.min.css").pop("licence")),
        "uplot/uPlot.min.css: no licence",
    ),
    "no version": (
        lambda d: _rewrite_lock(d, lambda e: _entry(e, "htmx.org/htmx.min.js").update(version="")),
        "htmx.org/htmx.min.js: no version",
    ),
    "a version range": (
        lambda d: _rewrite_lock(d, lambda e: _entry(e, "htmx.org/htmx.min.js").update(version="^2.0.0")),
        "htmx.org/htmx.min.js: version '^2.0.0' is not an exact one",
    ),
    "no package": (
        lambda d: _rewrite_lock(d, lambda e: _entry(e, "htmx.org/htmx.min.js").pop("package")),
        "htmx.org/htmx.min.js: no package",
    ),
    "no LICENSE": (_drop_a_licence_file, "uplot: its LICENSE is not vendored"),
    "a path outside the folder": (
        lambda d: _rewrite_lock(d, lambda e: _entry(e, "uplot/LICENSE").update(path="../../index.html")),
        "../../index.html: not a plain path inside the vendor folder",
    ),
}


@pytest.mark.parametrize("tampering", sorted(TAMPERINGS))
def test_the_checks_catch(tampering: str, tmp_path: Path) -> None:
    copy = tmp_path / "vendor"
    shutil.copytree(VENDOR_DIR, copy)
    assert all_problems(copy) == []
    tamper, expected = TAMPERINGS[tampering]
    tamper(copy)
    assert expected in all_problems(copy)
