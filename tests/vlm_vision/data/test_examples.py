"""Examples (`vlm_vision.data.examples`): the dataset of scanned records, their media loaded (bad media skipped), and batches padded."""

from __future__ import annotations

import json

import pytest
import torch

from tests.vlm_vision.data.records import llava_record as _record
from tests.vlm_vision.data.records import tokenizer_with_placeholders
from tests.vlm_vision.data.records import visual_spec as _visual
from tests.vlm_vision.train_fixtures import QUESTION, write_colour_video
from vlm_vision.errors import InputError
from vlm_vision.model.placeholders import IGNORE_INDEX
from vlm_vision.data.formats import BadSample, parse_record
from vlm_vision.data.examples import ConversationDataset, Example, pad_batch
from vlm_vision.data.files import Skipped, read_records
from vlm_vision.data.record_tokens import scan_records


@pytest.fixture(scope="module")
def tok():
    return tokenizer_with_placeholders()


def test_parse_record_resolves_media_and_maps_roles(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    rec = parse_record(_record(), tmp_path)
    assert rec.media_kind == "video" and rec.media_path == tmp_path / "a.mp4" and not rec.cached
    assert [m["role"] for m in rec.messages] == ["user", "assistant"]
    (tmp_path / "a.safetensors").write_bytes(b"x")
    assert parse_record(_record(video="a.safetensors"), tmp_path).cached


@pytest.mark.parametrize("raw, reason", [
    (_record(conversations=[]), "empty conversation"),
    ({"id": "x"}, "empty conversation"),
    (_record(video="nope.mp4"), "missing media"),
    (_record(question="<video> and <video>"), r"found 2 <video> in human turns; expected 1, one per video"),
    (_record(question="<video> and <image>"), r"mixes <video> \(1\) and <image> \(1\)"),
    (_record(video=None), r"found 1 <video> and 0 <image> in human turns; expected none .* no media"),
    (_record(answer="a <video>"), r"found 1 <video> elsewhere than human turns"),
    (_record(video=None, image=["a.mp4", "a.mp4"], question="<image>"), r"found 1 <image> .* expected 2"),
    (_record(video=None, image="a.mp4", question="<video>"), r"found 1 <video> in human turns of an image record"),
    (_record(video=[]), r"'video' must be a path or a list of paths"),
    (_record(image="a.mp4"), "both 'video' and 'image'"),
    (_record(conversations=[{"from": "gpt", "value": "hi"}]), "must start with a human turn"),
    (_record(conversations=[{"from": "human", "value": QUESTION}]), "no gpt"),
    (_record(conversations=[{"from": "robot", "value": QUESTION}]), "role 'robot'"),
    ("not a dict", "JSON object"),
])
def test_parse_record_rejects_bad_records_with_the_reason(tmp_path, raw, reason):
    (tmp_path / "a.mp4").write_bytes(b"x")
    with pytest.raises(BadSample, match=reason):
        parse_record(raw, tmp_path)


def test_read_records_json_and_jsonl(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps([_record()]))
    assert read_records(tmp_path / "d.json") == [_record()]
    (tmp_path / "d.jsonl").write_text(json.dumps(_record()) + "\n{broken\n\n")
    out = read_records(tmp_path / "d.jsonl")
    assert out[0] == _record() and isinstance(out[1], Skipped) and "line 2" in out[1].reason
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_records(tmp_path / "bad.json")
    (tmp_path / "obj.json").write_text("{}")
    with pytest.raises(ValueError, match="JSON list"):
        read_records(tmp_path / "obj.json")
    with pytest.raises(InputError, match="nothing.json"):
        read_records(tmp_path / "nothing.json")


def test_dataset_expands_video_and_skips_undecodable_media(tmp_path, tok):
    write_colour_video(tmp_path / "a.mp4", (200, 0, 0), frames=4)
    (tmp_path / "broken.mp4").write_bytes(b"not a video")

    class DecodeError(Exception):
        pass

    def load_video(path):
        if path.name == "broken.mp4":
            raise DecodeError(f"cannot decode {path}")
        return torch.zeros(3, 16, 16, 3, dtype=torch.uint8)  # (T, H, W, 3)

    records, _ = scan_records([_record(), _record(video="broken.mp4")], tmp_path, tok, _visual(tok), 256)
    ds = ConversationDataset(records, tok, _visual(tok), max_length=256, load_video=load_video,
                             load_cached=None, transform=lambda f: torch.zeros(f.shape[0], 3, 8, 8),
                             decode_errors=(DecodeError,))
    ex = ds[0]
    assert isinstance(ex, Example) and ex.media_kind == "video" and ex.media.shape == (3, 3, 8, 8)
    video_id = tok.convert_tokens_to_ids("<video>")
    assert int((ex.input_ids == video_id).sum()) == 3 * 4
    assert bool((ex.labels[ex.input_ids == video_id] == IGNORE_INDEX).all())
    bad = ds[1]
    assert isinstance(bad, Skipped) and "could not be decoded" in bad.reason and "broken.mp4" in bad.reason


def test_a_bug_in_our_code_is_not_bad_data(tmp_path, tok):
    """A TypeError while loading media is a programming error: it propagates instead of skipping."""
    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "ok.png")
    write_colour_video(tmp_path / "a.mp4", (200, 0, 0), frames=4)

    def buggy_transform(image):
        raise TypeError("transform() got an unexpected keyword argument 'size'")

    def buggy_loader(path):
        raise TypeError("load_video() takes 1 positional argument but 2 were given")

    records, _ = scan_records([_image_record("ok.png"), _record()], tmp_path, tok, _visual(tok), 256)
    ds = ConversationDataset(records, tok, _visual(tok), max_length=256, load_video=buggy_loader,
                             load_cached=None, transform=buggy_transform, decode_errors=(ValueError,))
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        ds[0]
    with pytest.raises(TypeError, match="takes 1 positional argument"):
        ds[1]


def _image_record(name):
    return _record(video=None, question="<image>\nWhat colour?", answer="red", image=name)


def test_an_unreadable_image_is_skipped_not_fatal(tmp_path, tok):
    import numpy as np
    from PIL import Image

    from vlm_vision.model.transforms import CLIPImageTransform

    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"this is no image")
    records, _ = scan_records([_image_record("ok.png"), _image_record("bad.png")], tmp_path, tok, _visual(tok), 256)
    ds = ConversationDataset(records, tok, _visual(tok), max_length=256, load_video=None, load_cached=None,
                             transform=CLIPImageTransform(8))
    ok, bad = ds[0], ds[1]
    assert isinstance(ok, Example) and ok.media.shape == (1, 3, 8, 8) and ok.image_size is None
    assert int((ok.input_ids == tok.convert_tokens_to_ids("<image>")).sum()) == 9
    assert isinstance(bad, Skipped) and "image could not be read" in bad.reason and "bad.png" in bad.reason


def test_anyres_image_tokens_follow_each_image_size(tmp_path, tok):
    import dataclasses

    import numpy as np
    from PIL import Image

    for name, (h, w) in {"wide.png": (20, 50), "tall.png": (50, 20)}.items():
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / name)
    (tmp_path / "bad.png").write_bytes(b"this is no image")
    visual = dataclasses.replace(_visual(tok), anyres_tokens=lambda h, w: h + w)  # a count that tells sizes apart
    raw = [_image_record("wide.png"), _image_record("tall.png"), _image_record("bad.png")]
    records, skipped = scan_records(raw, tmp_path, tok, visual, 256)
    assert len(records) == 2 and "image could not be read" in skipped[0].reason  # found from the header alone

    def load_anyres(path):
        h, w = Image.open(path).size[::-1]
        return torch.zeros(3 if w > h else 2, 3, 8, 8), (h, w)  # (P, 3, S, S), (H, W)

    ds = ConversationDataset(records, tok, visual, max_length=256, load_video=None, load_cached=None,
                             transform=None, load_anyres=load_anyres)
    image_id = tok.convert_tokens_to_ids("<image>")
    wide, tall = ds[0], ds[1]
    assert wide.image_size == (20, 50) and tall.image_size == (50, 20) and wide.media.shape[0] == 3
    assert int((wide.input_ids == image_id).sum()) == 70 == int((tall.input_ids == image_id).sum())
    with pytest.raises(ValueError, match="anyres VisualSpec needs load_anyres"):
        ConversationDataset(records, tok, visual, max_length=256, load_video=None, load_cached=None, transform=None)


def test_pad_batch_right_pads():
    a = Example("a", torch.tensor([5, 6, 7]), torch.tensor([-100, 6, 7]), None, None)
    b = Example("b", torch.tensor([8]), torch.tensor([8]), None, None)
    batch = pad_batch([a, b], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
