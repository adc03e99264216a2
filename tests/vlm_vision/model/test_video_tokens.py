"""SlowFast and token budgets in the model: order by hand, and processor and model agreeing on every layout."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from projector import build_projector
from tests.vlm_vision.fusion_fixtures import scramble, vision_config
from tests.vlm_vision.train_fixtures import make_llm, make_tokenizer
from video.budget import VideoLayout
from video.clip import VideoClip
from vlm_vision import CLIPVisionTower, VisionLanguageModel, VisionLanguageProcessor
from vlm_vision.model.video_tokens import arrange_video_tokens, pool_video


def numbered(t: int, n: int, start: float) -> torch.Tensor:
    """float[t, n, 1] holding start, start + 1, ... so every token says where it came from."""
    return (start + torch.arange(t * n, dtype=torch.float32)).reshape(t, n, 1)


def test_slowfast_order_by_hand():
    # 3 frames, k = 2: frames 0 and 2 slow (2x2 grid), frame 1 fast (1x1), grid newlines, then F
    slow, fast = numbered(2, 4, 100), numbered(1, 1, 200)
    nl, ft = torch.tensor([-1.0]), torch.tensor([-2.0])
    out = arrange_video_tokens(slow, fast, nl, slow_grid=(2, 2), fast_grid=(1, 1), layout="grid", faster_token=ft,
                               faster_token_stride=2)
    assert out.flatten().tolist() == [100, 101, -1, 102, 103, -1, -2,  # frame 0: 2 rows + newline each, F
                                      200, -1, -2,  # frame 1: fast row + newline, F
                                      104, 105, -1, 106, 107, -1, -2]  # frame 2
    assert out.shape[0] == VideoLayout(grid=(4, 4), newline="grid", faster_token_stride=2).count(3, 2)


@pytest.mark.parametrize("layout,expected", [
    ("no_token", [100, 101, 102, 103, -2, 200, -2]),
    ("frame", [100, 101, 102, 103, -1, -2, 200, -1, -2]),
    ("one_token", [100, 101, 102, 103, -2, 200, -2, -1]),
])
def test_slowfast_with_the_other_newline_layouts(layout, expected):
    slow, fast = numbered(1, 4, 100), numbered(1, 1, 200)
    out = arrange_video_tokens(slow, fast, torch.tensor([-1.0]), slow_grid=(2, 2), fast_grid=(1, 1), layout=layout,
                               faster_token=torch.tensor([-2.0]), faster_token_stride=3)  # frames 0 slow, 1 fast
    assert out.flatten().tolist() == expected
    assert len(expected) == VideoLayout(grid=(4, 4), newline=layout, faster_token_stride=3).count(2, 2)


def test_pool_video_slow_and_fast_frames():
    # 4x4 grid, 3 frames, k = 2, stride 2: frames 0, 2 average 2x2 blocks; frame 1 averages all 16
    features = torch.arange(3 * 16, dtype=torch.float32).reshape(3, 16, 1)
    layout = VideoLayout(grid=(4, 4), faster_token_stride=2)
    slow, fast = pool_video(features, layout, 2, pooled=False)
    assert slow[:, :, 0].tolist() == [[2.5, 4.5, 10.5, 12.5], [34.5, 36.5, 42.5, 44.5]]
    assert fast[:, :, 0].tolist() == [[23.5]]
    # from extracted (already pooled) tokens, the fast frames pool the pooled grid once more: same values
    pooled = torch.tensor([[2.5, 4.5, 10.5, 12.5], [18.5, 20.5, 26.5, 28.5], [34.5, 36.5, 42.5, 44.5]])[..., None]
    slow2, fast2 = pool_video(pooled, layout, 2, pooled=True)
    assert torch.equal(slow2, slow) and torch.equal(fast2, fast)
    with pytest.raises(ValueError, match="4 tokens per frame, but 3 frames are pooled at stride 4"):
        pool_video(pooled, VideoLayout(grid=(4, 4)), 4, pooled=True)
    with pytest.raises(ValueError, match="bilinear"):
        pool_video(pooled, VideoLayout(grid=(4, 4), pool_mode="bilinear", faster_token_stride=2), 2, pooled=True)


def clip(t: int, seed: int = 0) -> VideoClip:
    """A VideoClip of t random 20x20 frames whose presentation times are not index / fps."""
    frames = torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (t, 20, 20, 3), dtype=np.uint8))
    nominal = [i / 10 for i in range(t)]
    return VideoClip(frames=frames, indices=list(range(t)), timestamps=nominal, native_fps=10.0, num_total_frames=t,
                     duration=t / 10, path=None, presentation_times=[x + 0.013 * i * i for i, x in enumerate(nominal)])


def build(newline: str, faster: int | None, budget: int | None, mode: str):
    tok = make_tokenizer()
    ids = VisionLanguageProcessor(tok, CLIPVisionTower(vision_config()).image_transform)
    llm = scramble(make_llm(len(tok)), 1)
    model = VisionLanguageModel(CLIPVisionTower(vision_config()), build_projector("mlp2x_gelu", 32, 64), llm,
                                image_token_id=ids.image_token_id, video_token_id=ids.video_token_id,
                                video_newline=newline, pool_mode=mode, faster_token_stride=faster,
                                max_video_tokens=budget)
    return model, tok


COMBOS = list(itertools.product(["no_token", "one_token", "frame", "grid"], [None, 2], [None, 40], [False, True]))


@pytest.mark.parametrize("newline,faster,budget,markers", COMBOS)
def test_processor_and_model_agree(newline, faster, budget, markers):
    # average pooling on the 4x4 grid allows strides 2 and 4; SlowFast needs 2s to divide it too, so
    # its budget runs use bilinear (strides 2, 3, 4). 12 frames of 4 tokens (48+) exceed 40: stride 4.
    mode = "bilinear" if faster and budget else "average"
    model, tok = build(newline, faster, budget, mode)
    processor = VisionLanguageProcessor.for_model(tok, model, time_markers=markers)
    videos = [clip(3, 0), clip(12, 1), clip(1, 2)]
    batch = processor(["<video>\nWhat colour is this video?", "<video> and <video>"], videos=videos)
    per_video = model.video_features(list(batch["pixel_values_videos"]))
    counts = [v.shape[0] for v in per_video]
    assert counts == [processor.num_video_tokens(c.frames.shape[0]) for c in videos] == \
        [model.video_tokens(c.frames.shape[0]) for c in videos]
    assert int((batch["input_ids"] == model.video_token_id).sum()) == sum(counts)
    if budget:
        assert model.video_layout.stride_for(12) > 2 and max(counts) <= budget
    out = model(**batch)  # the splice checks every placeholder against a visual token
    assert out.logits.shape[:2] == batch["input_ids"].shape


def test_model_count_mismatch_names_both_counts():
    model, tok = build("grid", 2, None, "average")
    processor = VisionLanguageProcessor.for_model(tok, model)
    batch = processor("<video> hi", videos=[clip(3)])
    batch["pixel_values_videos"] = batch["pixel_values_videos"][:, :2]  # 2 frames where 3 were counted
    # 3 frames: slow 2x(2+1) + F = 7, fast 1x(1+1) + F = 3, slow 7 -> 17; 2 frames give 7 + 3 = 10
    with pytest.raises(ValueError, match=r"holds 17 placeholder tokens .* give 10 tokens"):
        model(**batch)


def test_export_to_transformers_refuses_what_it_cannot_express(tmp_path):
    for faster, budget in ((2, None), (None, 40)):
        model, _ = build("no_token", faster, budget, "average")
        with pytest.raises(ValueError, match="LlavaNextVideo cannot express"):
            model.save_llava_next_video(tmp_path / "hf")
        assert not (tmp_path / "hf").exists()
