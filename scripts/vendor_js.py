"""Refresh the console's vendored JavaScript and CSS from the npm registry (for maintainers only).

    python scripts/vendor_js.py          # fetch, rewrite admin_ui/static/vendor/ and its VENDOR.lock
    python scripts/vendor_js.py --check  # fetch, and exit 1 if that would change anything

Each package is fetched with `npm pack` (which checks the tarball against the registry's integrity), its tarball's
SHA-512 is checked again here, and only the files listed in PACKAGES are taken from it, with the package's LICENSE.
The lock names, for every vendored file, its package, version, licence (SPDX, from the package's package.json), the
tarball's URL and integrity, and the file's SHA-256; tests/admin_ui/test_vendored_files.py checks the files against
it. Nothing here runs at install or run time: the vendored files are committed, and `make up` serves them.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENDOR_DIR = ROOT / "admin_ui" / "static" / "vendor"
LOCK_NAME = "VENDOR.lock"


@dataclass(frozen=True)
class Package:
    name: str
    spec: str  # an npm version range: the newest version it allows is taken
    files: dict[str, str]  # path in the tarball (under package/) -> file name under vendor/<name>/


PACKAGES = (
    Package("htmx.org", "~2.0.0", {"dist/htmx.min.js": "htmx.min.js", "LICENSE": "LICENSE"}),
    Package(
        "uplot",
        "1.6.32",
        {"dist/uPlot.iife.min.js": "uPlot.iife.min.js", "dist/uPlot.min.css": "uPlot.min.css", "LICENSE": "LICENSE"},
    ),
)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pack(package: Package, workdir: Path) -> tuple[dict[str, object], Path]:
    """`npm pack name@spec` into `workdir`: npm's report of the tarball, and the tarball's path."""
    result = subprocess.run(
        ["npm", "pack", f"{package.name}@{package.spec}", "--json", "--pack-destination", str(workdir)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"npm pack {package.name}@{package.spec} failed:\n{result.stderr}")
    (report,) = json.loads(result.stdout)
    tarball = workdir / str(report["filename"])
    algorithm, _, expected = str(report["integrity"]).partition("-")
    if algorithm != "sha512":
        raise SystemExit(f"{package.name}: expected a sha512 integrity from npm, got {report['integrity']}")
    actual = base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    if actual != expected:
        raise SystemExit(f"{package.name}: the tarball's SHA-512 does not match npm's integrity")
    return report, tarball


def _member(archive: tarfile.TarFile, name: str) -> bytes:
    member = archive.getmember(f"package/{name}")
    if not member.isfile():
        raise SystemExit(f"package/{name} is not a regular file")
    handle = archive.extractfile(member)
    if handle is None:
        raise SystemExit(f"package/{name} cannot be read")
    return handle.read()


def vendor(target: Path) -> list[dict[str, object]]:
    """Write every package's files under `target` (emptied first) and its lock; return the lock's entries."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    files: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="facemint-vendor-") as tmp:
        for package in PACKAGES:
            report, tarball = _pack(package, Path(tmp))
            with tarfile.open(tarball, "r:gz") as archive:
                manifest = json.loads(_member(archive, "package.json"))
                contents = {dest: _member(archive, source) for source, dest in package.files.items()}
            licence = manifest.get("license")
            if not isinstance(licence, str):
                raise SystemExit(f"{package.name}: package.json names no SPDX licence ({licence!r})")
            version = str(report["version"])
            (target / package.name).mkdir()
            for source, dest in package.files.items():
                data = contents[dest]
                (target / package.name / dest).write_bytes(data)
                files.append(
                    {
                        "path": f"{package.name}/{dest}",
                        "package": package.name,
                        "version": version,
                        "licence": licence,
                        "source": f"package/{source}",
                        "tarball": f"https://registry.npmjs.org/{package.name}/-/{report['filename']}",
                        "integrity": report["integrity"],
                        "sha256": _sha256(data),
                        "bytes": len(data),
                    }
                )
    files.sort(key=lambda f: str(f["path"]))
    lock = {
        "about": "Vendored browser files of the admin console; written by scripts/vendor_js.py, checked by "
        "tests/admin_ui/test_vendored_files.py. Paths are relative to this folder.",
        "files": files,
    }
    (target / LOCK_NAME).write_text(json.dumps(lock, indent=2) + "\n")
    return files


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a refresh would")
    args = parser.parse_args(argv)
    if shutil.which("npm") is None:
        raise SystemExit("npm is needed to refresh the vendored files")
    if args.check:
        with tempfile.TemporaryDirectory(prefix="facemint-vendor-check-") as tmp:
            fresh = Path(tmp) / "vendor"
            vendor(fresh)
            if _tree(fresh) != _tree(VENDOR_DIR):
                sys.stdout.write(f"{VENDOR_DIR.relative_to(ROOT)} is out of date: run scripts/vendor_js.py\n")
                return 1
        sys.stdout.write(f"{VENDOR_DIR.relative_to(ROOT)} is up to date\n")
        return 0
    for entry in vendor(VENDOR_DIR):
        sys.stdout.write(f"{entry['path']}  {entry['package']} {entry['version']} ({entry['licence']})\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
