"""Records with several videos (each its own frames and budget) and several images (base resolution on
anyres models, as LLaVA-OneVision reads them) are counted, batched and trained."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from tests.vlm_vision.training.test_loop import ANYRES_PINPOINTS, config, losses, train_capturing
from tests.vlm_vision.train_fixtures import COLOURS, write_colour_video, write_llm_folder, write_tower_folder
from vlm_vision.model.anyres import BASE_RESOLUTION
from vlm_vision.data.formats import parse_record
from vlm_vision.data.record_tokens import VisualSpec, visual_counts
from vlm_vision.data.examples import Example
from vlm_vision.training.loss import model_inputs


def _spec(anyres=None) -> VisualSpec:
    return VisualSpec(token_ids={"video": 5, "image": 6}, video_tokens=lambda t: min(t, 3) * 4 + 1, image_tokens=9,
                      tokens_per_frame=4, num_frames=2, anyres_tokens=anyres)


def test_each_video_of_a_record_has_its_own_frames_and_budget(tmp_path):
    from safetensors.torch import save_file

    save_file({"tokens": torch.zeros(5, 4, 8)}, str(tmp_path / "long.safetensors"))
    (tmp_path / "raw.mp4").write_bytes(b"\0")
    record = parse_record({"id": "two", "video": ["raw.mp4", "long.safetensors"], "conversations": [
        {"from": "human", "value": "<video> then <video>: same?"}, {"from": "gpt", "value": "no"}]}, tmp_path)
    # the raw video gets num_frames=2 (2*4+1 tokens); the cached one its 5 frames, capped by the budget at 3
    assert visual_counts(record, _spec(), [2, 5]) == (5, [9, 13])
    images = parse_record({"id": "imgs", "image": ["raw.mp4", "raw.mp4"], "conversations": [
        {"from": "human", "value": "<image> <image>"}, {"from": "gpt", "value": "x"}]}, tmp_path)
    # an anyres model counts several images at base resolution: image_tokens each, no tiling
    assert visual_counts(images, _spec(anyres=lambda h, w: 1000), 1) == (6, [9, 9])


def test_a_batch_puts_every_video_and_base_image_in_prompt_order():
    ids = torch.tensor([1, 2])
    two = Example("a", ids, ids, "video", [torch.zeros(2, 3, 4, 4), torch.ones(5, 3, 4, 4)])
    one = Example("b", ids, ids, "video", torch.full((3, 3, 4, 4), 2.0))
    batch = model_inputs([two, one], pad_token_id=0)
    assert [v.shape[0] for v in batch["pixel_values_videos"]] == [2, 5, 3]
    tiled = Example("c", ids, ids, "image", torch.zeros(3, 3, 4, 4), (30, 70))
    base = Example("d", ids, ids, "image", torch.ones(2, 3, 4, 4), BASE_RESOLUTION)
    batch = model_inputs([tiled, base], pad_token_id=0)
    assert [p.shape[0] for p in batch["pixel_values"]] == [3, 1, 1]
    assert batch["image_sizes"].tolist() == [[30, 70], [0, 0], [0, 0]]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("multi")
    records = []
    names = list(COLOURS)
    for i, colour in enumerate(names):
        other = names[(i + 1) % len(names)]
        write_colour_video(root / f"{colour}.mp4", COLOURS[colour], frames=4, seed=i)
        Image.fromarray(np.full((30, 70), 0, np.uint8)).convert("RGB").save(root / f"{colour}_wide.png")
        Image.fromarray(np.full((20, 24, 3), COLOURS[colour], np.uint8)).save(root / f"{colour}.png")
        records += [
            {"id": f"vv{i}", "video": [f"{colour}.mp4", f"{other}.mp4"], "conversations": [
                {"from": "human", "value": "<video>\n<video>\nWhich colour comes first?"},
                {"from": "gpt", "value": colour}]},
            {"id": f"ii{i}", "image": [f"{colour}.png", f"{other}.png", f"{colour}.png"], "conversations": [
                {"from": "human", "value": "<image> <image> <image>\nWhich colour is twice?"},
                {"from": "gpt", "value": colour}]},
            {"id": f"i{i}", "image": f"{colour}_wide.png", "conversations": [
                {"from": "human", "value": "<image>\nWhat shape?"}, {"from": "gpt", "value": "wide"}]}]
    data = root / "multi.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    return {"llm": str(write_llm_folder(root / "llm")), "tower": str(write_tower_folder(root / "tower")),
            "data": str(data), "media_root": str(root)}


@pytest.mark.slow
@pytest.mark.parametrize("anyres", [False, True])
def test_multi_video_and_multi_image_records_train(media, tmp_path, anyres):
    extra = {"image_grid_pinpoints": ANYRES_PINPOINTS} if anyres else {}
    final, run, _ = train_capturing(config(media, tmp_path / "run", stage=2, max_steps=3, batch_size=3,
                                           max_length=400, lr=1e-2, **extra))
    assert all(math.isfinite(x) for x in losses(tmp_path / "run"))
    assert not (tmp_path / "run" / "skipped.jsonl").exists() or not (tmp_path / "run" / "skipped.jsonl").read_text()
    assert len(run.dataset) == 3 * len(COLOURS)
    video_id, image_id = run.processor.video_token_id, run.processor.image_token_id
    two_videos, three_images, wide = run.dataset[0], run.dataset[1], run.dataset[2]
    assert isinstance(two_videos.media, list) and [m.shape[0] for m in two_videos.media] == [4, 4]
    assert int((two_videos.input_ids == video_id).sum()) == 2 * run.model.video_tokens(4)
    assert int((three_images.input_ids == image_id).sum()) == 3 * run.model.image_tokens  # never tiled
    assert three_images.image_size == (BASE_RESOLUTION if anyres else None)
    if anyres:  # the single wide image is still tiled
        assert wide.image_size == (30, 70) and int((wide.input_ids == image_id).sum()) > run.model.image_tokens
    # the model reads the batch: one forward over all three shapes
    batch = model_inputs([two_videos, three_images, wide], run.processor.tokenizer.pad_token_id or 0)
    with torch.no_grad():
        out = run.model(**batch)
    assert torch.isfinite(out.logits).all()
    assert final.exists()
