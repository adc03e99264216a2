"""The scan over the store keeps every length and skip reason of the per-record path, on 10,000 random records.

Every record shape accepted today is drawn at random (LLaVA turns with `<image>`, `<video>` or no
placeholder, a system turn, transformers' typed `messages`, media as a string or a list, several
images, cached token files of several lengths, text only, conversations past `max_length`), with the
bad shapes that are skipped (missing media, wrong roles, placeholder mismatches, empty
conversations, no answer, JSONL lines that are not JSON, non-objects). The reference is each record
parsed and scanned alone (`parse_record` + `scan_one`: the exact path the batched scan defers to).
Several videos in one record are new and tested in `test_multi_media.py`.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tokenizers import AddedToken

from tests.vlm_vision.train_fixtures import make_tokenizer
from vlm_vision.data.formats import BadSample, MediaRoots, parse_record
from vlm_vision.data.files import Skipped
from vlm_vision.data.scan import cached_scan
from vlm_vision.data.store import open_store
from vlm_vision.data.record_tokens import VisualSpec, scan_one

WORDS = "the red blue cat video frame person walks slowly a of on é ☃ 12 ?".split()


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def _turns(rng: random.Random, tag: str | None, count: int) -> list[dict]:
    where = rng.random()
    lead = "".join(f"{tag}\n" for _ in range(count)) if tag and where < 0.8 else ""
    first = lead + _text(rng, 1, 30) + ("".join(f" {tag}" for _ in range(count)) if tag and where >= 0.8 else "")
    turns = [{"from": "human", "value": first}, {"from": "gpt", "value": _text(rng, 1, 60)}]
    for _ in range(rng.randint(0, 3)):
        turns += [{"from": "human", "value": _text(rng, 1, 20)}, {"from": "gpt", "value": _text(rng, 0, 200)}]
    if rng.random() < 0.1:
        turns.insert(0, {"from": "system", "value": _text(rng, 1, 10)})
    return turns


def random_record(i: int, rng: random.Random) -> object:
    """One record of a random accepted (or refused) shape."""
    shape = rng.randrange(16)
    rid = f"r{i}"
    if shape == 0:  # LLaVA-Video-178K: a video with <image>
        return {"id": rid, "video": f"v{rng.randrange(3)}.mp4", "conversations": _turns(rng, "<image>", 1)}
    if shape == 1:
        return {"id": rid, "video": [f"v{rng.randrange(3)}.mp4"], "conversations": _turns(rng, "<video>", 1)}
    if shape == 2:  # no placeholder: one is added
        return {"id": rid, "video": "v0.mp4", "conversations": _turns(rng, None, 0)}
    if shape == 3:
        return {"id": rid, "image": "p.png", "conversations": _turns(rng, rng.choice(["<image>", None]), 1)}
    if shape == 4:
        n = rng.randint(2, 4)
        return {"id": rid, "image": ["p.png"] * n, "conversations": _turns(rng, "<image>", n)}
    if shape == 5:
        return {"id": rid, "conversations": _turns(rng, None, 0)}
    if shape == 6:  # cached tokens of 1, 2 or 5 frames
        return {"id": rid, "video": f"t{rng.choice([1, 2, 5])}.safetensors", "conversations": _turns(rng, "<video>", 1)}
    if shape == 7:  # transformers' messages
        kind = rng.choice(["image", "video"])
        part = {"type": kind, "path": "p.png" if kind == "image" else "v1.mp4"}
        return {"id": rid, "messages": [
            {"role": "user", "content": [part, {"type": "text", "text": _text(rng, 1, 20)}]},
            {"role": "assistant", "content": rng.choice([_text(rng, 1, 40), [{"type": "text", "text": "ok"}]])}]}
    if shape == 8:  # long: cut to max_length, or its visual span would be cut
        return {"id": rid, "video": "v0.mp4", "conversations": [
            {"from": "human", "value": rng.choice(["<image>\n", ""]) + _text(rng, 100, 400) +
             rng.choice(["", " <image>"])}, {"from": "gpt", "value": _text(rng, 1, 300)}]}
    if shape == 9:
        return {"id": rid, "video": "gone.mp4", "conversations": _turns(rng, "<image>", 1)}
    if shape == 10:
        return {"id": rid, "video": "v0.mp4", "image": "p.png", "conversations": _turns(rng, "<image>", 1)}
    if shape == 11:
        return {"id": rid, "image": ["p.png", "p.png"], "conversations": _turns(rng, "<image>", 1)}
    if shape == 12:
        return {"id": rid, "conversations": rng.choice([[], [{"from": "gpt", "value": "hi"}],
                                                        [{"from": "human", "value": "no answer"}],
                                                        [{"from": "robot", "value": "x"}]])}
    if shape == 13:
        return {"id": rid, "video": "v0.mp4", "conversations": [{"from": "human", "value": "<video> <image>"},
                                                                 {"from": "gpt", "value": "a <video>"}]}
    if shape == 14:
        return rng.choice(["a string", 7, None, ["list"]])
    return {"conversations": _turns(rng, None, 0)}  # no id


def _media(root):
    for name in ("v0.mp4", "v1.mp4", "v2.mp4", "p.png"):
        (root / name).write_bytes(b"\0")
    for t in (1, 2, 5):  # the scan reads a token file's header only
        save_file({"tokens": torch.zeros(t, 4, 8)}, str(root / f"t{t}.safetensors"))


@pytest.fixture(scope="module")
def tok():
    tok = make_tokenizer()
    tok.add_tokens([AddedToken("<video>", special=True), AddedToken("<image>", special=True)], special_tokens=True)
    return tok


@pytest.mark.slow
@pytest.mark.parametrize("time_instruction, n", [(False, 10_000), (True, 2_000)])
def test_10000_random_records_scan_to_the_lengths_and_reasons_of_the_per_record_path(tmp_path, tok, time_instruction, n):
    rng = random.Random(23 + time_instruction)
    _media(tmp_path)
    lines = []
    for i in range(n):
        record = random_record(i, rng)
        lines.append(json.dumps(record) if rng.random() > 0.005 else "{cut off")
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    visual = VisualSpec(token_ids={"video": tok.convert_tokens_to_ids("<video>"),
                                   "image": tok.convert_tokens_to_ids("<image>")},
                        video_tokens=lambda t: t * 4 + 1, image_tokens=9, tokens_per_frame=4, num_frames=3,
                        time_instruction=time_instruction)
    roots, max_length = MediaRoots(media_root=tmp_path), 300
    store = open_store(tmp_path / "train.jsonl", tmp_path / "cache")
    result, _ = cached_scan(store, roots, tok, visual, max_length, cache_dir=tmp_path / "cache", workers=2)
    reasons = {int(k): s for k, s in zip(result.skipped_rows, result.skipped)}
    counts = {"kept": 0, "skipped": 0}
    for k in range(len(store)):
        raw = store.raw(k)
        try:
            if isinstance(raw, Skipped):
                raise BadSample(raw.id, raw.reason)
            expected = scan_one(parse_record(raw, roots, int(store.positions[k]), store.source(k)), tok, visual,
                                max_length)
        except BadSample as e:
            counts["skipped"] += 1
            assert k in reasons and reasons[k].reason == e.reason and reasons[k].id == e.sample_id, (k, raw)
            assert reasons[k].source == store.source(k) and result.lengths[k] == 0
            continue
        counts["kept"] += 1
        assert k not in reasons and result.lengths[k] == expected, (k, raw, reasons.get(k))
    assert counts["kept"] > 0.4 * n and counts["skipped"] > 0.2 * n, counts
    assert np.count_nonzero(result.cached) > 0.03 * n
