"""Training on community data shapes: LLaVA-Video-178K's records (videos with `<image>`), mixtures.

Runs the real loop on the tiny models and one-colour videos of `train_fixtures`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.vlm_vision.training.test_loop import assert_names_held_out_colours
from tests.vlm_vision.train_fixtures import (
    COLOURS,
    write_colour_video,
    write_llm_folder,
    write_tower_folder,
)
from vlm_vision import TrainConfig, train

FRAMES = 4
LETTERS = "ABCD"


def llava_video_178k(root: Path, n: int = 8) -> Path:
    """Records in LLaVA-Video-178K's exact shape: `<image>` in video records, `data_source`, paths under a
    source folder; open-ended, multiple-choice and caption records per video, plus a missing video."""
    names = list(COLOURS)
    records = []
    for i in range(n):
        colour = names[i % len(names)]
        rel = f"academic_source/colours/{colour}_{i}.mp4"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_colour_video(root / rel, COLOURS[colour], frames=FRAMES, seed=i)
        options = "\n".join(f"{LETTERS[k]}. {c}" for k, c in enumerate(names))
        records += [
            {"id": f"colours_oe_{i}", "data_source": "colours", "video": rel, "conversations": [
                {"from": "human", "value": "<image>\nWhat colour is this video?"},
                {"from": "gpt", "value": f"The video is mostly {colour}."}]},
            {"id": f"colours_mc_{i}", "data_source": "colours", "video": rel, "conversations": [
                {"from": "human", "value": f"<image>\nWhat colour is this video?\n{options}\n"
                                           f"Answer with the option's letter from the given choices directly."},
                {"from": "gpt", "value": f"{LETTERS[names.index(colour)]}."}]},
        ]
        if i % 2 == 0:
            records.append({"id": f"colours_cap_{i}", "data_source": "colours", "video": rel, "conversations": [
                {"from": "human", "value": "<image>\nDescribe the clip."},
                {"from": "gpt", "value": f"A clip of a single colour. The video is mostly {colour}."}]})
    records.append({"id": "colours_gone", "data_source": "colours", "video": "academic_source/colours/gone.mp4",
                    "conversations": [{"from": "human", "value": "<image>\nWhat colour is this video?"},
                                      {"from": "gpt", "value": "red"}]})
    path = root / "llava_video_178k_colours.json"
    path.write_text(json.dumps(records, indent=1))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"llm": str(write_llm_folder(root / "llm")), "tower": str(write_tower_folder(root / "tower"))}


def _config(models, data, out, **overrides) -> TrainConfig:
    values = dict(models, data=str(data), output_dir=str(out), stage=1, max_steps=3, batch_size=4,
                  num_frames=FRAMES, max_length=160, lora_r=8, lora_alpha=16, warmup_ratio=0.0, progress=False, seed=0)
    values.update(overrides)
    return TrainConfig(**values)


def _losses(out: Path) -> list[float]:
    return [e["loss"] for e in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in e]


def test_llava_video_178k_records_train_and_the_model_reads_the_video(models, tmp_path):
    data = llava_video_178k(tmp_path / "media")
    s1 = train(_config(models, data, tmp_path / "s1", max_steps=10, lr=1e-2))
    s2 = train(_config(models, data, tmp_path / "s2", stage=2, max_steps=20, lr=1e-2, init_from=str(s1)))
    first, second = _losses(tmp_path / "s1"), _losses(tmp_path / "s2")
    assert sum(second[-3:]) / 3 < 0.25 * first[0], (first, second)
    skipped = [json.loads(line) for line in (tmp_path / "s1" / "skipped.jsonl").read_text().splitlines()]
    assert [s["id"] for s in skipped] == ["colours_gone"] and "missing media" in skipped[0]["reason"]
    assert_names_held_out_colours(s2, tmp_path)  # the answers depend on the video: the model reads it


def _colour_image(path: Path, rgb) -> str:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((20, 24, 3), rgb, np.uint8)).save(path)
    return path.name


def _mixture(root: Path) -> Path:
    """A YAML mixture of every accepted shape, media in separate image and video folders."""
    names = list(COLOURS)
    videos, texts, messages, multi = [], [], [], []
    (root / "vids").mkdir(parents=True)
    for i, colour in enumerate(names * 2):
        write_colour_video(root / "vids" / f"{colour}_{i}.mp4", COLOURS[colour], frames=FRAMES, seed=i)
        videos.append({"id": f"v{i}", "video": f"{colour}_{i}.mp4", "conversations": [  # no placeholder at all
            {"from": "human", "value": "What colour is this video?"},
            {"from": "gpt", "value": f"The video is mostly {colour}."}]})
        image = _colour_image(root / "imgs" / f"{colour}_{i}.png", COLOURS[colour])
        messages.append({"id": f"m{i}", "messages": [
            {"role": "user", "content": [{"type": "image", "path": image}, {"type": "text", "text": "Colour?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": colour}]}]})
        multi.append({"id": f"mi{i}", "image": [image, image], "conversations": [
            {"from": "human", "value": "<image> and <image>: the same colour?"}, {"from": "gpt", "value": "Yes."}]})
        texts.append({"id": f"t{i}", "conversations": [{"from": "human", "value": "Name a colour. " * (1 + i)},
                                                        {"from": "gpt", "value": colour}]})
    (root / "data").mkdir()
    (root / "data" / "videos.json").write_text(json.dumps(videos))
    (root / "data" / "text.jsonl").write_text("".join(json.dumps(r) + "\n" for r in texts))
    (root / "data" / "messages.json").write_text(json.dumps(messages))
    (root / "data" / "multi.json").write_text(json.dumps(multi))
    (root / "mix.yaml").write_text(
        "datasets:\n"
        "  - json_path: data/videos.json\n"                                        # 8
        "  - json_path: data/text.jsonl\n    sampling_strategy: first:3\n"        # 3
        "  - json_path: data/messages.json\n    sampling_strategy: random:50%\n"  # 4
        "  - json_path: data/multi.json\n    sampling_strategy: end:2\n")         # 2
    return root / "mix.yaml"


def test_a_mixture_of_every_shape_trains_grouped_and_resumes_from_the_cached_scan(models, tmp_path, caplog):
    import logging

    data = _mixture(tmp_path)
    common = dict(image_folder=str(tmp_path / "imgs"), video_folder=str(tmp_path / "vids"),
                  group_by_modality_length=True, batch_size=2, max_length=200)
    caplog.set_level(logging.INFO, logger="vlm_vision.train")
    train(_config(models, data, tmp_path / "run", max_steps=2, save_every=2, **common))
    kept = [r.message for r in caplog.records if "samples kept" in r.message]
    assert kept and "17 samples kept, 0 skipped" in kept[0] and "scan computed" in kept[0]
    assert len(list((tmp_path / "run" / "data-scan").glob("scan-*.npz"))) == 1
    caplog.clear()
    train(_config(models, data, tmp_path / "run", max_steps=4, resume=True, **common))
    kept = [r.message for r in caplog.records if "samples kept" in r.message]
    assert kept and "scan read from the cache" in kept[0]
    assert len(_losses(tmp_path / "run")) == 4

