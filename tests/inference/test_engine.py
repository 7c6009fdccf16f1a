"""The engine end to end on demo models: loading through insightface's own routing, face choice, region-only
paste-back, typed failures, provider checks, thread safety."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from inference.engine import Engine, EngineConfig, FaceMode, FaceSelection
from inference.errors import (
    InvalidFaceSelection,
    InvalidOutputFormat,
    InvalidProcessors,
    ModelContractError,
    ModelNotFound,
    NoMatchingFace,
    NoReferenceFace,
    NoSourceFace,
    NoTargetFace,
    ProcessorUnavailable,
    ProviderUnavailable,
)
from inference.models import (
    DETECTOR_FILE,
    ENHANCER_FILE,
    RECOGNIZER_FILE,
    SWAPPER_FILE,
    draw_demo_face,
    write_demo_models,
)
from inference.providers import CUDA, ProviderChoice, available_providers

Face = tuple[int, int, int, int]  # x, y, size, identity


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("engine_models")
    write_demo_models(directory)
    return directory


@pytest.fixture(scope="module")
def engine(_block_network: None, models_dir: Path) -> Engine:
    return Engine.load(EngineConfig(models_dir=models_dir, provider=ProviderChoice.cpu))


def picture(width: int, height: int, faces: list[Face], *, seed: int = 1) -> NDArray[np.uint8]:
    """A dark, noisy background (every pixel distinct enough to notice a change) with demo faces."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 80, size=(height, width, 3), dtype=np.uint8)
    for x, y, size, identity in faces:
        draw_demo_face(image, x, y, size, identity=identity)
    return image


def png(image: NDArray[np.uint8]) -> bytes:
    ok, data = cv2.imencode(".png", image)
    assert ok
    return bytes(data)


def decode(data: bytes) -> NDArray[np.uint8]:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def changed_inside(before: NDArray[np.uint8], after: NDArray[np.uint8], face: Face) -> bool:
    x, y, size, _ = face
    return bool(np.any(before[y : y + size, x : x + size] != after[y : y + size, x : x + size]))


def unchanged_outside(before: NDArray[np.uint8], after: NDArray[np.uint8], faces: list[Face], margin: float) -> bool:
    """True when every pixel farther than `margin` x size from the swapped faces is bit-identical."""
    keep = np.ones(before.shape[:2], dtype=bool)
    for x, y, size, _ in faces:
        pad = int(size * margin)
        keep[max(0, y - pad) : y + size + pad, max(0, x - pad) : x + size + pad] = False
    return bool(np.array_equal(before[keep], after[keep]))


SOURCE = picture(400, 400, [(100, 100, 200, 7)], seed=2)


class TestLoading:
    def test_models_are_routed_and_checked_by_insightface(self, engine: Engine) -> None:
        from insightface.model_zoo.arcface_onnx import ArcFaceONNX
        from insightface.model_zoo.inswapper import INSwapper
        from insightface.model_zoo.scrfd import SCRFD

        assert isinstance(engine._detector, SCRFD)
        assert isinstance(engine._recognizer, ArcFaceONNX)
        assert isinstance(engine._swapper, INSwapper)
        assert engine.model_set == "demo"
        assert engine.providers == ["CPUExecutionProvider"]
        # One detector session, at the fixed size, created by the warm-up.
        assert engine._detector.resolution_session_input_sizes == ((640, 640),)

    def test_loading_prints_nothing_to_stdout(self, models_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
        Engine.load(EngineConfig(models_dir=models_dir, provider=ProviderChoice.cpu))
        assert capfd.readouterr().out == ""

    def test_missing_model_files_are_named(self, tmp_path: Path) -> None:
        write_demo_models(tmp_path)
        (tmp_path / "w600k_r50.onnx").unlink()
        with pytest.raises(ModelNotFound) as info:
            Engine.load(EngineConfig(models_dir=tmp_path, provider=ProviderChoice.cpu))
        assert "w600k_r50.onnx" in info.value.detail

    def test_a_model_with_another_contract_is_refused(self, tmp_path: Path) -> None:
        write_demo_models(tmp_path)
        shutil.copy(tmp_path / "w600k_r50.onnx", tmp_path / "det_10g.onnx")
        with pytest.raises(ModelContractError) as info:
            Engine.load(EngineConfig(models_dir=tmp_path, provider=ProviderChoice.cpu))
        assert "det_10g.onnx" in info.value.detail


class TestProviders:
    @pytest.mark.skipif(CUDA in available_providers(), reason="this machine may really have CUDA")
    @pytest.mark.parametrize("choice", [ProviderChoice.cuda, ProviderChoice.tensorrt])
    def test_a_gpu_asked_for_on_a_cpu_machine_fails_at_start_up(self, models_dir: Path, choice: ProviderChoice) -> None:
        with pytest.raises(ProviderUnavailable) as info:
            Engine.load(EngineConfig(models_dir=models_dir, provider=choice))
        message = info.value.detail
        assert f"{choice.value} was asked for" in message
        assert "onnxruntime" in message  # names the likely cause (here: the CPU build is installed)

    def test_auto_chooses_what_is_there(self, models_dir: Path) -> None:
        engine = Engine.load(EngineConfig(models_dir=models_dir, provider=ProviderChoice.auto))
        expected = "CUDAExecutionProvider" if CUDA in available_providers() else "CPUExecutionProvider"
        assert engine.providers[0] == expected

    @pytest.mark.gpu
    @pytest.mark.skipif(CUDA not in available_providers(), reason="needs onnxruntime-gpu and a CUDA device")
    def test_cuda_runs_every_model_on_the_gpu(self, models_dir: Path) -> None:
        engine = Engine.load(EngineConfig(models_dir=models_dir, provider=ProviderChoice.cuda))
        assert engine.providers[0] == CUDA
        target = picture(1280, 720, [(500, 200, 300, 1)])
        result = engine.swap(png(SOURCE), png(target))
        assert result.faces_swapped == 1


class TestFaceChoice:
    FACES: list[Face] = [(100, 200, 260, 1), (700, 300, 140, 2), (1000, 150, 200, 3)]

    def target(self) -> NDArray[np.uint8]:
        return picture(1280, 720, self.FACES)

    def test_largest_by_default_and_nothing_else_changes(self, engine: Engine) -> None:
        target = self.target()
        result = engine.swap(png(SOURCE), png(target))
        out = decode(result.image)
        assert (result.faces_detected, result.faces_swapped) == (3, 1)
        assert changed_inside(target, out, self.FACES[0])
        assert not changed_inside(target, out, self.FACES[1])
        assert not changed_inside(target, out, self.FACES[2])
        assert unchanged_outside(target, out, [self.FACES[0]], margin=0.5)

    def test_all(self, engine: Engine) -> None:
        target = self.target()
        result = engine.swap(png(SOURCE), png(target), faces="all")
        out = decode(result.image)
        assert result.faces_swapped == 3
        assert all(changed_inside(target, out, face) for face in self.FACES)
        assert unchanged_outside(target, out, self.FACES, margin=0.5)

    def test_index_counts_left_to_right(self, engine: Engine) -> None:
        target = self.target()
        result = engine.swap(png(SOURCE), png(target), faces="index:1,2")
        out = decode(result.image)
        assert result.faces_swapped == 2
        assert not changed_inside(target, out, self.FACES[0])
        assert changed_inside(target, out, self.FACES[1])
        assert changed_inside(target, out, self.FACES[2])

    def test_index_out_of_range(self, engine: Engine) -> None:
        with pytest.raises(InvalidFaceSelection) as info:
            engine.swap(png(SOURCE), png(self.target()), faces="index:3")
        assert info.value.extra["faces_detected"] == 3

    @pytest.mark.parametrize("text", ["biggest", "index:", "index:a", "index:-1", "", "index:1;2"])
    def test_unknown_selections_are_refused(self, text: str) -> None:
        with pytest.raises(InvalidFaceSelection):
            FaceSelection.parse(text)

    def test_reference_picks_the_most_similar_face(self, engine: Engine) -> None:
        target = self.target()
        reference = picture(500, 500, [(150, 120, 220, 2)], seed=5)  # identity 2, drawn at another size
        selection = FaceSelection.parse("reference", threshold=0.8)
        assert selection.mode is FaceMode.reference
        result = engine.swap(png(SOURCE), png(target), faces=selection, reference=png(reference))
        out = decode(result.image)
        assert result.faces_swapped == 1
        assert changed_inside(target, out, self.FACES[1])
        assert not changed_inside(target, out, self.FACES[0])
        assert not changed_inside(target, out, self.FACES[2])

    def test_reference_below_the_threshold_matches_nothing(self, engine: Engine) -> None:
        reference = picture(500, 500, [(150, 120, 220, 9)], seed=5)  # an identity the target does not have
        with pytest.raises(NoMatchingFace) as info:
            engine.swap(
                png(SOURCE),
                png(self.target()),
                faces=FaceSelection.parse("reference", threshold=0.8),
                reference=png(reference),
            )
        assert info.value.extra["best_similarity"] < 0.8

    def test_reference_needs_an_image_with_a_face(self, engine: Engine) -> None:
        with pytest.raises(InvalidFaceSelection):
            engine.swap(png(SOURCE), png(self.target()), faces="reference")
        with pytest.raises(NoReferenceFace):
            engine.swap(png(SOURCE), png(self.target()), faces="reference", reference=png(picture(300, 300, [])))


class TestResult:
    def test_the_swapped_face_takes_the_source_identity(self, engine: Engine) -> None:
        target = picture(1280, 720, [(500, 200, 300, 1)])
        out = decode(engine.swap(png(SOURCE), png(target)).image)
        from insightface.app.common import Face as InsightFace

        def embed(image: NDArray[np.uint8]) -> NDArray[np.float32]:
            [face] = engine._detect(image)
            engine._recognizer.get(image, face)
            assert isinstance(face, InsightFace)
            return face.normed_embedding  # type: ignore[no-any-return]

        swapped, source, original = embed(out), embed(SOURCE), embed(target)
        # The feathered edge keeps a little of the target; the identity is the source's by a wide margin.
        assert float(swapped @ source) > 0.8
        assert float(swapped @ original) < 0.5

    def test_result_carries_what_jobs_meter(self, engine: Engine) -> None:
        result = engine.swap(png(SOURCE), png(picture(640, 480, [(200, 100, 200, 1)])))
        assert result.model_set == "demo"
        assert result.providers == ["CPUExecutionProvider"]
        assert (result.width, result.height) == (640, 480)
        assert {"decode", "detect", "embed", "swap", "paste", "encode", "total"} <= set(result.timings_ms)
        assert result.timings_ms["total"] >= result.timings_ms["paste"]

    @pytest.mark.parametrize(
        ("fmt", "content_type", "magic"),
        [
            ("png", "image/png", b"\x89PNG"),
            ("jpeg", "image/jpeg", b"\xff\xd8"),
            ("jpg", "image/jpeg", b"\xff\xd8"),
            ("webp", "image/webp", b"RIFF"),
        ],
    )
    def test_output_formats(self, engine: Engine, fmt: str, content_type: str, magic: bytes) -> None:
        result = engine.swap(png(SOURCE), png(picture(640, 480, [(200, 100, 200, 1)])), output_format=fmt)
        assert result.content_type == content_type
        assert result.image.startswith(magic)

    def test_unknown_output_format(self, engine: Engine) -> None:
        with pytest.raises(InvalidOutputFormat):
            engine.swap(png(SOURCE), png(picture(640, 480, [(200, 100, 200, 1)])), output_format="gif")


class TestFailures:
    def test_no_source_face(self, engine: Engine) -> None:
        with pytest.raises(NoSourceFace) as info:
            engine.swap(png(picture(400, 400, [])), png(picture(640, 480, [(200, 100, 200, 1)])))
        assert info.value.code == "no_source_face"
        assert info.value.input_error

    def test_no_target_face(self, engine: Engine) -> None:
        with pytest.raises(NoTargetFace) as info:
            engine.swap(png(SOURCE), png(picture(640, 480, [])))
        assert info.value.code == "no_target_face"


class TestConcurrency:
    def test_threads_sharing_one_engine_get_the_same_results(self, engine: Engine) -> None:
        targets = [picture(960, 540, [(100 + 60 * i, 120, 220, i)], seed=i) for i in range(6)]
        expected = [engine.swap(png(SOURCE), png(t)).image for t in targets]
        with ThreadPoolExecutor(max_workers=4) as pool:
            got = list(pool.map(lambda t: engine.swap(png(SOURCE), png(t)).image, targets * 2))
        assert got == expected * 2


def test_a_reference_is_only_read_in_reference_mode(engine: Engine) -> None:
    # Not decoded, so not refused: the largest face is swapped as if no reference had been sent.
    result = engine.swap(png(SOURCE), png(picture(640, 480, [(200, 100, 200, 1)])), reference=b"not an image")
    assert result.faces_swapped == 1


def test_region_paste_keeps_the_source_identity_as_well_as_stock_paste_back(engine: Engine) -> None:
    """The claim in inference/paste.py: the feathered region mask loses no identity against insightface's own."""
    target = picture(1280, 720, [(500, 200, 300, 1)])

    def embed(image: NDArray[np.uint8]) -> NDArray[np.float32]:
        [face] = engine._detect(image)
        engine._recognizer.get(image, face)
        return face.normed_embedding  # type: ignore[no-any-return]

    [target_face] = engine._detect(target)
    [source_face] = engine._detect(SOURCE)
    engine._recognizer.get(SOURCE, source_face)
    stock = engine._swapper.get(target.copy(), target_face, source_face, paste_back=True)
    ours = decode(engine.swap(png(SOURCE), png(target)).image)
    source = embed(SOURCE)
    assert float(embed(ours) @ source) >= float(embed(stock) @ source) - 0.01


class TestProcessors:
    TARGET: list[Face] = [(500, 200, 300, 1)]

    def test_the_engine_lists_the_enhancer_when_its_model_is_there(self, engine: Engine) -> None:
        assert engine.processors == ("face_swapper", "face_enhancer")
        assert engine._enhancer is not None
        assert engine.providers == ["CPUExecutionProvider"]  # its session passed the provider check too

    def test_the_enhancer_changes_the_swapped_face_only(self, engine: Engine) -> None:
        target = picture(1280, 720, self.TARGET)
        plain = engine.swap(png(SOURCE), png(target))
        enhanced = engine.swap(png(SOURCE), png(target), processors="face_swapper,face_enhancer")
        assert plain.processors == ("face_swapper",)
        assert enhanced.processors == ("face_swapper", "face_enhancer")
        assert "enhance" in enhanced.timings_ms
        assert "enhance" not in plain.timings_ms
        a, b = decode(plain.image), decode(enhanced.image)
        assert changed_inside(a, b, self.TARGET[0])
        assert unchanged_outside(a, b, self.TARGET, margin=0.5)

    def test_processors_in_any_order_run_in_pipeline_order(self, engine: Engine) -> None:
        target = png(picture(640, 480, [(200, 100, 200, 1)]))
        one = engine.swap(png(SOURCE), target, processors=["face_enhancer", "face_swapper"])
        other = engine.swap(png(SOURCE), target, processors="face_swapper, FACE_ENHANCER")
        assert one.processors == other.processors == ("face_swapper", "face_enhancer")
        assert one.image == other.image

    @pytest.mark.parametrize("processors", ["face_enhancer", "face_swapper,face_swapper", "face_swapper,upscaler", ""])
    def test_invalid_processors_are_refused_before_any_work(self, engine: Engine, processors: str) -> None:
        with pytest.raises(InvalidProcessors) as info:
            engine.swap(b"not decoded", b"not decoded", processors=processors)
        assert info.value.code == "invalid_processors"

    def test_the_enhancer_without_its_model_is_unavailable(self, models_dir: Path, tmp_path: Path) -> None:
        for file in (DETECTOR_FILE, RECOGNIZER_FILE, SWAPPER_FILE):
            shutil.copy(models_dir / file, tmp_path / file)
        engine = Engine.load(EngineConfig(models_dir=tmp_path, provider=ProviderChoice.cpu))
        assert engine.processors == ("face_swapper",)
        target = png(picture(640, 480, [(200, 100, 200, 1)]))
        assert engine.swap(png(SOURCE), target).faces_swapped == 1
        with pytest.raises(ProcessorUnavailable) as info:
            engine.swap(png(SOURCE), target, processors="face_swapper,face_enhancer")
        assert (info.value.status_code, info.value.input_error) == (503, False)

    def test_a_real_enhancer_beside_demo_models_is_refused(self, models_dir: Path, tmp_path: Path) -> None:
        import onnx

        for file in (DETECTOR_FILE, RECOGNIZER_FILE, SWAPPER_FILE):
            shutil.copy(models_dir / file, tmp_path / file)
        enhancer = onnx.load(str(models_dir / ENHANCER_FILE))
        del enhancer.metadata_props[:]  # no demo marker: it reads as a real model
        onnx.save(enhancer, str(tmp_path / ENHANCER_FILE))
        with pytest.raises(ModelContractError) as info:
            Engine.load(EngineConfig(models_dir=tmp_path, provider=ProviderChoice.cpu))
        assert info.value.extra["models"]["enhancer"] == "real"
