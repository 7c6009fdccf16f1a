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


def _models_note(model_set: str) -> str:
    return {"demo": " (demo models)", "standin": " (stand-in models)"}.get(model_set, "")


def _trim(target: Path, engine: Any, start: float | None, end: float | None) -> Any:
    """The trim asked for, checked against the probed video (None: the whole video)."""
    from inference.video import probe_video, resolve_trim

    if start is None and end is None:
        return None
    probe = probe_video(target, limits=engine.config.video_limits)
    return resolve_trim(probe, trim_start=start, trim_end=end)


def engine_config(settings: Settings, *, models: Path | None = None, provider: str | None = None) -> EngineConfig:
    from inference.engine import EngineConfig
    from inference.media import MediaLimits
    from inference.providers import ProviderChoice
    from inference.video import VideoLimits

    return EngineConfig(
        models_dir=models or settings.resolved_models_dir,
        provider=ProviderChoice(provider or settings.engine_provider),
        det_size=settings.engine_det_size,
        limits=MediaLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels),
        video_limits=VideoLimits(
            max_bytes=settings.max_video_bytes,
            max_duration_seconds=settings.video_max_duration_seconds,
            max_pixels_per_frame=settings.video_max_pixels,
            max_fps=settings.video_max_fps,
            max_frames=settings.video_max_frames,
        ),
        cache_dir=settings.data_dir / "trt-cache",
    )


class _VideoProgress:
    """`facemint swap`'s progress on stderr for a video: one line rewritten in place, at most once a percent."""

    def __init__(self) -> None:
        self.shown = -1

    def __call__(self, done: int, total: int) -> None:
        percent = done * 100 // total if total else 100
        if percent != self.shown:
            self.shown = percent
            click.echo(f"\r  {done}/{total} frames ({percent}%)", nl=False, err=True)

    def end(self) -> None:
        if self.shown >= 0:
            click.echo("", err=True)


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
    @click.option("--format", "output_format", default=None, help="png | jpeg | webp (default: from -o); mp4")
    @click.option("--quality", type=click.IntRange(1, 100), default=90, show_default=True)
    @click.option("--processors", default="face_swapper", show_default=True, help="face_swapper[,face_enhancer]")
    @click.option("--trim-start", type=click.FloatRange(min=0), default=None, help="video: from this second")
    @click.option("--trim-end", type=click.FloatRange(min=0), default=None, help="video: up to this second")
    @click.option("--crf", type=click.IntRange(0, 51), default=None, help="video: H.264 CRF (FACEMINT_VIDEO_CRF)")
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
        processors: str,
        trim_start: float | None,
        trim_end: float | None,
        crf: int | None,
    ) -> None:
        """Put the SOURCE face on the faces of TARGET, an image or a video (MP4, MOV, WebM, MKV: recognised by
        content, written as MP4 with its audio), locally; writes OUTPUT."""
        from inference.engine import Engine, FaceSelection
        from inference.errors import EngineError
        from inference.video import detect_video_container

        settings = load_settings()
        try:
            with target.open("rb") as handle:
                video = detect_video_container(handle.read(64)) is not None
            source_bytes = source.read_bytes()
            reference_bytes = reference.read_bytes() if reference else None
        except OSError as exc:
            _fail(f"cannot read {exc.filename}: {exc.strerror}")
        if video:
            if (output_format or "mp4").lower() != "mp4" or output.suffix.lower() not in (".mp4", ""):
                _fail(f"a video target is written as MP4: name the output .mp4, not {output.name!r}")
        elif trim_start is not None or trim_end is not None or crf is not None:
            _fail("--trim-start, --trim-end and --crf apply to video targets only")
        suffix_formats = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
        fmt = output_format or suffix_formats.get(output.suffix.lower())
        if fmt is None and not video:
            _fail(f"cannot tell the output format from {output.name!r}: use .png, .jpg or .webp, or --format")
        progress = _VideoProgress()
        try:
            selection = FaceSelection.parse(faces, threshold=threshold)
            engine = Engine.load(engine_config(settings, models=models, provider=provider))
            if video:
                clip = engine.swap_video(
                    source_bytes,
                    target,
                    output,
                    faces=selection,
                    reference=reference_bytes,
                    trim=_trim(target, engine, trim_start, trim_end),
                    processors=processors,
                    crf=settings.video_crf if crf is None else crf,
                    progress=progress,
                )
            else:
                result = engine.swap(
                    source_bytes,
                    target.read_bytes(),
                    faces=selection,
                    reference=reference_bytes,
                    output_format=fmt or "png",
                    quality=quality,
                    processors=processors,
                )
        except EngineError as exc:
            progress.end()
            _fail(f"{exc.code}: {exc.detail}")
        except OSError as exc:
            progress.end()
            _fail(f"cannot read {exc.filename}: {exc.strerror}")
        progress.end()
        if video:
            seconds = clip.timings_ms["total"] / 1000
            click.echo(
                f"{output}: {clip.frames_done} frames, {clip.frames_swapped} with a face swapped "
                f"({', '.join(clip.processors)}), in {seconds:.1f} s ({clip.frames_done / seconds:.1f} frames/s) "
                f"on {', '.join(clip.providers)}{_models_note(clip.model_set)}; audio {clip.audio}",
                err=True,
            )
            return
        try:
            output.write_bytes(result.image)
        except OSError as exc:
            _fail(f"cannot write {output}: {exc.strerror}")
        enhanced = " and enhanced" if "face_enhancer" in result.processors else ""
        click.echo(
            f"{output}: swapped{enhanced} {result.faces_swapped} of {result.faces_detected} face(s) in "
            f"{result.timings_ms['total']:.0f} ms on {', '.join(result.providers)}{_models_note(result.model_set)}",
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
