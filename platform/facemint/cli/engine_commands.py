"""`facemint doctor`, `facemint swap` and `facemint models ...`: the engine from the command line, no server."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from facemint.config import Settings

if TYPE_CHECKING:  # the engine (insightface, onnxruntime) loads only for the commands that use it
    from inference.engine import EngineConfig

PROVIDERS = click.Choice(["auto", "cuda", "tensorrt", "cpu"])


def _fail(message: object) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _manifest(path: Path | None) -> tuple[Any, ...]:
    from inference.models import REAL_MODELS, ManifestError, load_manifest

    if path is None:
        return REAL_MODELS
    try:
        return load_manifest(path)
    except (ManifestError, OSError) as exc:
        _fail(f"invalid manifest {path}: {exc}")


def _with_enhancer(entries: tuple[Any, ...], enhancer: bool) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The manifest's entries plus, with `--enhancer`, the optional models it does not list already; and those."""
    from inference.models import OPTIONAL_MODELS

    listed = {entry.file for entry in entries}
    extra = tuple(model for model in OPTIONAL_MODELS if enhancer and model.file not in listed)
    return entries + extra, extra


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def engine_config(settings: Settings, *, models: Path | None = None, provider: str | None = None) -> EngineConfig:
    from inference.engine import EngineConfig
    from inference.media import MediaLimits
    from inference.providers import ProviderChoice

    return EngineConfig(
        models_dir=models or settings.resolved_models_dir,
        provider=ProviderChoice(provider or settings.engine_provider),
        det_size=settings.engine_det_size,
        limits=MediaLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels),
        cache_dir=settings.data_dir / "trt-cache",
    )


def register(cli: click.Group, load_settings: Callable[[], Settings]) -> None:
    """`load_settings` returns the Settings, or exits with one clear line when they are invalid."""

    @cli.command()
    @click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
    @click.argument("target", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True)
    @click.option("--faces", default="largest", show_default=True, help="largest | all | index:i,j | reference")
    @click.option("--reference", type=click.Path(dir_okay=False, path_type=Path), default=None)
    @click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True)
    @click.option("--provider", type=PROVIDERS, default=None, help="default: FACEMINT_ENGINE_PROVIDER (auto)")
    @click.option("--models", type=click.Path(file_okay=False, path_type=Path), default=None)
    @click.option("--format", "output_format", default=None, help="png | jpeg | webp (default: from -o)")
    @click.option("--quality", type=click.IntRange(1, 100), default=90, show_default=True)
    def swap(
        source: Path,
        target: Path,
        output: Path,
        faces: str,
        reference: Path | None,
        threshold: float,
        provider: str | None,
        models: Path | None,
        output_format: str | None,
        quality: int,
    ) -> None:
        """Put the SOURCE face on the TARGET image's faces, locally; writes OUTPUT."""
        from inference.engine import Engine, FaceSelection
        from inference.errors import EngineError

        settings = load_settings()
        suffix_formats = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
        fmt = output_format or suffix_formats.get(output.suffix.lower())
        if fmt is None:
            _fail(f"cannot tell the output format from {output.name!r}: use .png, .jpg or .webp, or --format")
        try:
            inputs = [p.read_bytes() for p in (source, target)]
            reference_bytes = reference.read_bytes() if reference else None
        except OSError as exc:
            _fail(f"cannot read {exc.filename}: {exc.strerror}")
        try:
            selection = FaceSelection.parse(faces, threshold=threshold)
            engine = Engine.load(engine_config(settings, models=models, provider=provider))
            result = engine.swap(
                inputs[0], inputs[1], faces=selection, reference=reference_bytes, output_format=fmt, quality=quality
            )
        except EngineError as exc:
            _fail(f"{exc.code}: {exc.detail}")
        try:
            output.write_bytes(result.image)
        except OSError as exc:
            _fail(f"cannot write {output}: {exc.strerror}")
        models_note = " (demo models)" if result.model_set == "demo" else ""
        click.echo(
            f"{output}: swapped {result.faces_swapped} of {result.faces_detected} face(s) in "
            f"{result.timings_ms['total']:.0f} ms on {', '.join(result.providers)}{models_note}",
            err=True,
        )

    @cli.command()
    @click.option("--models", type=click.Path(file_okay=False, path_type=Path), default=None)
    @click.option("--provider", type=PROVIDERS, default=None)
    @click.option("--allow-demo/--require-real", default=True, show_default=True)
    def doctor(models: Path | None, provider: str | None, allow_demo: bool) -> None:
        """Check the engine: onnxruntime, providers, model files; non-zero exit when something is missing."""
        from inference.engine import Engine
        from inference.errors import EngineError
        from inference.install import environment_problems
        from inference.models import REAL_MODELS, verify_models
        from inference.providers import available_providers, installed_runtimes

        settings = load_settings()
        config = engine_config(settings, models=models, provider=provider)
        problems: list[str] = list(environment_problems())
        runtimes = installed_runtimes()
        click.echo("onnxruntime: " + (", ".join(f"{k} {v}" for k, v in runtimes.items()) or "not installed"))
        click.echo("available providers: " + ", ".join(available_providers()))
        models_dir = config.models_dir
        click.echo(f"models: {models_dir}")
        results = verify_models(REAL_MODELS, models_dir)
        for result in results:
            if result.present:
                digest = result.sha256 or _sha256(result.path)
                kind = "demo model" if result.is_demo else ("real model" if result.ok else "UNKNOWN model")
                click.echo(f"  {result.model.file}: {result.path.stat().st_size} bytes, sha256 {digest}, {kind}")
            else:
                click.echo(f"  {result.model.file}: missing")
            if not result.present:
                problems.append(f"{result.model.file} is missing")
            elif result.is_demo and not allow_demo:
                problems.append(f"{result.model.file} is a demo model")
            elif not result.is_demo and not result.ok:
                problems.append(f"{result.model.file} does not match the manifest")
        if all(r.present for r in results):
            try:
                engine = Engine.load(config)
                click.echo(f"engine: loaded {engine.model_set} models on {', '.join(engine.providers)}")
                if engine.model_set == "demo":
                    click.echo("engine: demo models: results are placeholders, not real face swaps")
            except EngineError as exc:
                problems.append(f"{exc.code}: {exc.detail}")
        for problem in problems:
            click.echo(f"PROBLEM {problem}")
        click.echo("ok" if not problems else f"{len(problems)} problem(s)")
        sys.exit(1 if problems else 0)

    @cli.group()
    def models() -> None:
        """The engine's model files."""

    @models.command("fetch")
    @click.option("--dest", type=click.Path(file_okay=False, path_type=Path), default=None)
    @click.option("--manifest", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None)
    @click.option("--enhancer", is_flag=True, help="Also the optional face enhancer, GFPGAN 1.4 (its own licence).")
    def models_fetch(dest: Path | None, manifest: Path | None, enhancer: bool) -> None:
        """Download the real models (resumable, checksum-verified). Non-commercial research licence."""
        from inference.errors import EngineError
        from inference.models import INSIGHTFACE_LICENCE, fetch_models

        settings = load_settings()
        target = dest or settings.resolved_models_dir
        entries, extra = _with_enhancer(_manifest(manifest), enhancer)
        click.echo(f"licence: {INSIGHTFACE_LICENCE}", err=True)
        for model in extra:
            click.echo(f"licence of {model.file}: {model.licence}", err=True)
        last: dict[str, int] = {}

        def progress(name: str, done: int, total: int) -> None:
            percent = done * 100 // total if total else 0
            if last.get(name) != percent:
                last[name] = percent
                click.echo(f"\r  {name}: {percent:3d}%", nl=False, err=True)

        try:
            paths = fetch_models(entries, target, progress=progress)
        except EngineError as exc:
            click.echo("", err=True)
            _fail(f"{exc.code}: {exc.detail}")
        click.echo("", err=True)
        for path in paths:
            click.echo(str(path))

    @models.command("verify")
    @click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None)
    @click.option("--manifest", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None)
    @click.option("--enhancer", is_flag=True, help="Also the optional face enhancer, GFPGAN 1.4.")
    def models_verify(directory: Path | None, manifest: Path | None, enhancer: bool) -> None:
        """Check the model files' sizes and checksums against the manifest."""
        from inference.models import verify_models

        settings = load_settings()
        entries, _ = _with_enhancer(_manifest(manifest), enhancer)
        results = verify_models(entries, directory or settings.resolved_models_dir)
        for result in results:
            click.echo(result.describe())
        sys.exit(0 if all(r.ok for r in results) else 1)

    @models.command("demo")
    @click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
    def models_demo(directory: Path) -> None:
        """Write small demo models with the real models' contracts (not real face swaps)."""
        from inference.models import write_demo_models

        for path in write_demo_models(directory).values():
            click.echo(str(path))
        click.echo("demo models written: results made with them are placeholders, not real face swaps", err=True)

    @models.command("standin")
    @click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
    @click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
    @click.option(
        "--role",
        "roles",
        type=click.Choice(["detector", "recognizer", "swapper", "enhancer"]),
        multiple=True,
        help="Write only this stand-in (repeatable); all four by default.",
    )
    def models_standin(directory: Path, seed: int, roles: tuple[str, ...]) -> None:
        """Write stand-in models: the real architectures with random weights (about 1.1 GB for all four).

        They cost what the real models cost (compute, memory, file size) while their results stay placeholders,
        steered like the demo models'. For benchmarks, not for real face swaps."""
        from inference.models import STANDIN_ROLES, write_standin_models

        for path in write_standin_models(directory, seed=seed, roles=roles or STANDIN_ROLES).values():
            click.echo(str(path))
        click.echo("stand-in models written: real compute, placeholder results, not real face swaps", err=True)
