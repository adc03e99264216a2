"""One loader everywhere: extraction, training from raw videos and evaluation all have the decoder
process resize frames for the tower (`video.frame_scale`), and `--full-resolution-frames` (or
`full_resolution_frames=True`) gives the earlier path in each; extraction records which, and never
keeps tokens of the other.

Shapes: T frames, H/W pixels, S the tower's side.
"""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch

from tests.vlm_vision.fusion_fixtures import make_tokenizer
from tests.vlm_vision.commands.test_extract import extract, manifest, tiny_model  # noqa: F401 (a fixture)
from tests.vlm_vision.training.test_setup import write_parts
from tests.vlm_vision.train_fixtures import write_colour_video
from video import load_video, load_video_tokens
from video.extract import read_token_header
from vlm_vision import TrainConfig
from vlm_vision.evaluation.questions import Question
from vlm_vision.evaluation.media import load_medium
from vlm_vision.evaluation.run import EvalConfig
from vlm_vision.model.processor import VisionLanguageProcessor
from vlm_vision.training.log import RunLog
from vlm_vision.training.setup import setup
from vlm_vision.model.transforms import CLIPImageTransform


def test_processor_sampling_carries_the_transforms_scale():
    transform = CLIPImageTransform(112)
    processor = VisionLanguageProcessor(make_tokenizer(), transform, num_frames=4)
    assert processor.video_sampling()["frame_scale"] == transform.frame_scale()
    full = VisionLanguageProcessor(make_tokenizer(), transform, num_frames=4, full_resolution_frames=True)
    assert full.video_sampling()["frame_scale"] is None


def test_eval_loads_videos_through_the_decoders_resize(data_dir):
    """`vlm-vision eval` hands `processor.video_sampling` to `load_medium`: the frames the tower sees
    are those of `load_video(..., frame_scale=...)`; with the setting off, of the full frames."""
    transform = CLIPImageTransform(112)
    model = types.SimpleNamespace(tower=types.SimpleNamespace(image_transform=transform), image_grid_pinpoints=None)
    question = Question(id="q", source="", media_kind="video", media_path=data_dir / "box.mp4", question="?")
    scaled = load_video(data_dir / "box.mp4", num_frames=4, frame_scale=transform.frame_scale())
    full = load_video(data_dir / "box.mp4", num_frames=4)
    for off, clip in ((False, scaled), (True, full)):
        processor = VisionLanguageProcessor(make_tokenizer(), transform, num_frames=4, full_resolution_frames=off)
        item = load_medium(question, model, 4, processor.video_sampling())
        assert torch.equal(item.media, transform(clip.frames)), off  # (4, 3, 112, 112)
    # the library call without the processor's sampling resizes in the decoder too
    assert torch.equal(load_medium(question, model, 4).media, transform(scaled.frames))
    assert EvalConfig(model="m", data=("d",), output_dir="o").full_resolution_frames is False


def test_training_decodes_raw_videos_through_the_decoders_resize(tmp_path):
    parts = write_parts(tmp_path, context=8192)
    write_colour_video(tmp_path / "red.mp4", (220, 30, 30), frames=4, size=400)  # larger than the 336 px tower
    for off, label, shape in ((False, "crop:336", (336, 336, 3)), (True, "full", (400, 400, 3))):
        out = tmp_path / f"run_{off}"
        out.mkdir()
        run = setup(TrainConfig(**parts, output_dir=str(out), progress=False, full_resolution_frames=off),
                    RunLog(out, enabled=False), main=True)
        clip = run.dataset.load_video(Path(tmp_path / "red.mp4"))  # what __getitem__ decodes a raw video with
        assert clip.frame_scale == label and tuple(clip.frames.shape[1:]) == shape
        assert run.dataset[0].input_ids.numel() > 0


def test_extract_records_the_scale_and_never_mixes_the_two(capsys, tmp_path, tiny_model, data_dir):  # noqa: F811
    out = tmp_path / "out"
    video = data_dir / "realshort.mp4"
    common = (video, "--out", out, "--model", tiny_model, "--num-frames", 3, "--workers", 0)
    code, stdout, _ = extract(capsys, *common, "--full-resolution-frames")
    assert code == 0 and read_token_header(out / "realshort.safetensors").metadata["frame_scale"] == "full"
    full = load_video_tokens(out / "realshort.safetensors").tokens

    code, stdout, _ = extract(capsys, *common)  # the default: the decoder resizes for the 28 px tower
    assert code == 0 and "frame_scale: 'full' there, 'crop:28' now" in stdout
    assert "frame_scale: 'full' there, 'crop:28' now" in manifest(out)[-1]["reason"]
    scaled = load_video_tokens(out / "realshort.safetensors")
    # on the CPU the same tokens (the transform's own resize, run in the decoder process), recorded apart
    assert scaled.frame_scale == "crop:28" and torch.equal(scaled.tokens, full)

    code, stdout, _ = extract(capsys, *common)
    assert code == 0 and manifest(out)[-1]["status"] == "skipped-existing"  # kept: same settings
    code, stdout, _ = extract(capsys, *common, "--full-resolution-frames")
    assert "frame_scale: 'crop:28' there, 'full' now" in stdout


@pytest.mark.parametrize("flag", ["--full-resolution-frames"])
def test_the_flag_is_documented(flag):
    manual = Path(__file__).resolve().parents[2] / "docs"
    assert flag in (manual / "video.md").read_text() and flag in (manual / "extract.md").read_text()
