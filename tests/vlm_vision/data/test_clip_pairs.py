"""CLIP's image/video-caption pairs (`vlm_vision.data.clip_pairs`): a JSON list or JSON lines read,
bad records dropped with their reason, and the held-out split the same on every rank."""

import json
import pathlib

import PIL.Image
import pytest

from vlm_vision.data.clip_pairs import Pair, read_pairs, split_pairs


@pytest.fixture
def colours(tmp_path) -> dict[str, pathlib.Path]:
    """A media folder with two small PNGs, red0.png and blue1.png."""
    media = tmp_path / "media"
    media.mkdir()
    for name, rgb in (("red0", (220, 30, 30)), ("blue1", (30, 40, 220))):
        PIL.Image.new("RGB", (8, 8), rgb).save(media / f"{name}.png")
    return {"media": media}


def test_read_pairs_json_list_and_split(colours, tmp_path):
    (tmp_path / "pairs.json").write_text(json.dumps([{"image": "red0.png", "caption": "red"},
                                                     {"image": "blue1.png", "caption": "blue"}]))
    pairs, skipped = read_pairs(tmp_path / "pairs.json", colours["media"])
    assert skipped == [] and pairs == [Pair(colours["media"] / "red0.png", "image", "red"),
                                       Pair(colours["media"] / "blue1.png", "image", "blue")]
    (tmp_path / "bad.json").write_text('{"image": "red0.png"}')
    with pytest.raises(ValueError, match="must hold a JSON list"):
        read_pairs(tmp_path / "bad.json", colours["media"])

    many = [Pair(pathlib.Path(f"{i}.png"), "image", str(i)) for i in range(10)]
    train, held_out = split_pairs(many, 0.25, seed=3)
    assert len(held_out) == 3 and len(train) == 7 and set(train).isdisjoint(held_out)
    assert split_pairs(many, 0.25, seed=3) == (train, held_out)  # the same split on every rank
    assert split_pairs(many, 0.0, seed=3)[1] == []


def test_bad_lines_of_json_lines_are_dropped_each_with_its_line_and_reason(colours, tmp_path):
    lines = [
        json.dumps({"image": "red0.png", "caption": "red"}),
        "{not json",
        json.dumps(["image", "red0.png"]),
        json.dumps({"image": "red0.png", "video": "red0.png", "caption": "red"}),
        json.dumps({"image": "red0.png", "caption": "  "}),
        "",
        json.dumps({"image": "green2.png", "caption": "green"}),
        json.dumps({"video": "blue1.png", "caption": "blue"}),
    ]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    pairs, skipped = read_pairs(tmp_path / "pairs.jsonl", colours["media"])
    assert pairs == [Pair(colours["media"] / "red0.png", "image", "red"),
                     Pair(colours["media"] / "blue1.png", "video", "blue")]
    assert [reason.split(":")[0] for reason in skipped] == ["line 2", "line 3", "line 4", "line 5", "line 7"]
    assert "invalid JSON" in skipped[0] and "expected an object, got list" in skipped[1]
    assert "exactly one of 'image' or 'video'" in skipped[2] and "non-empty string" in skipped[3]
    assert f"image file not found: {colours['media'] / 'green2.png'}" in skipped[4]
