"""The cached scan: lengths and skips computed once, reused, invalidated, shared across processes; and
the scan over the store keeps every length and skip reason of the per-record path, on 10,000 random records.

Every record shape accepted today is drawn at random (LLaVA turns with `<image>`, `<video>` or no
placeholder, a system turn, transformers' typed `messages`, media as a string or a list, several
images, cached token files of several lengths, text only, conversations past `max_length`), with the
bad shapes that are skipped (missing media, wrong roles, placeholder mismatches, empty
conversations, no answer, JSONL lines that are not JSON, non-objects). The reference is each record
parsed and scanned alone (`parse_record` + `scan_one`: the exact path the batched scan defers to).
Several videos in one record are tested in `tests/vlm_vision/model/test_multi_media.py`.
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
from vlm_vision.data.files import load_rows
from vlm_vision.data.files import Skipped
from vlm_vision.data.formats import BadSample, MediaRoots, parse_record
from vlm_vision.data.scan import KINDS, LazyRecords, cached_scan, scan_rows
from vlm_vision.data.store import open_store
from vlm_vision.data.record_tokens import VisualSpec, sample_tokens, scan_one


@pytest.fixture(scope="module")
def tok():
    tok = make_tokenizer()
    tok.add_tokens([AddedToken("<video>", special=True), AddedToken("<image>", special=True)], special_tokens=True)
    return tok


def _visual(tok):
    return VisualSpec(token_ids={"video": tok.convert_tokens_to_ids("<video>"),
                                 "image": tok.convert_tokens_to_ids("<image>")},
                      video_tokens=lambda t: t * 4, image_tokens=9, tokens_per_frame=4, num_frames=3)


def _dataset(root, n=12):
    """Videos (with `<image>`), images, multi-image, text-only and bad records, in one JSON file."""
    (root / "a.mp4").write_bytes(b"x")
    (root / "p.png").write_bytes(b"x")
    records = []
    for i in range(n):
        turns = [{"from": "human", "value": "What colour is this video? " * (i % 3 + 1)},
                 {"from": "gpt", "value": "The video is mostly red."}]
        shape = i % 6
        if shape == 0:
            records.append({"id": f"v{i}", "video": "a.mp4", "conversations": turns})  # no placeholder
        elif shape == 1:
            turns[0]["value"] = "<image>\n" + turns[0]["value"]
            records.append({"id": f"v{i}", "video": "a.mp4", "conversations": turns})
        elif shape == 2:
            turns[0]["value"] = "<image> and <image>"
            records.append({"id": f"i{i}", "image": ["p.png", "p.png"], "conversations": turns})
        elif shape == 3:
            records.append({"id": f"t{i}", "conversations": turns})
        elif shape == 4:
            records.append({"id": f"gone{i}", "video": "gone.mp4", "conversations": turns})
        else:
            records.append({"id": f"e{i}", "conversations": []})
    path = root / "train.json"
    path.write_text(json.dumps(records))
    return path


def _same(a, b):
    assert np.array_equal(a.lengths, b.lengths) and np.array_equal(a.kinds, b.kinds)
    assert a.skipped == b.skipped and np.array_equal(a.skipped_rows, b.skipped_rows)


def test_scan_lengths_kinds_and_skips_match_the_per_sample_tokens(tmp_path, tok):
    rows = load_rows(_dataset(tmp_path))
    roots = MediaRoots(media_root=tmp_path)
    result, hit = cached_scan(rows, roots, tok, _visual(tok), 256, cache_dir=None)
    assert not hit
    kept = result.kept
    assert [rows.raws[k]["id"][0] for k in kept] == ["v", "v", "i", "t"] * 2
    assert {s.id: (s.reason.split(":")[0], s.source) for s in result.skipped} == {
        "gone4": ("missing media", "train.json#4"), "gone10": ("missing media", "train.json#10"),
        "e5": ("empty conversation", "train.json#5"), "e11": ("empty conversation", "train.json#11")}
    records = LazyRecords(rows, kept, roots)
    for i, k in enumerate(kept):
        record = records[i]
        ids, _ = sample_tokens(record, tok, _visual(tok), 3, 256)
        assert result.lengths[k] == len(ids) and result.kinds[k] == KINDS[record.media_kind]
        assert records.source(i) == f"train.json#{k}" == record.source
    assert result.kinds[kept].tolist() == [2, 2, 1, 0] * 2


def test_the_cache_is_reused_and_invalidated_by_a_changed_data_file(tmp_path, tok):
    path = _dataset(tmp_path)
    roots, cache = MediaRoots(media_root=tmp_path), tmp_path / "out" / "data-scan"
    first, hit = cached_scan(load_rows(path), roots, tok, _visual(tok), 256, cache_dir=cache)
    assert not hit and len(list(cache.glob("scan-*.npz"))) == 1
    again, hit = cached_scan(load_rows(path), roots, tok, _visual(tok), 256, cache_dir=cache)
    assert hit
    _same(first, again)
    # another max_length is another key; so is a changed file
    _, hit = cached_scan(load_rows(path), roots, tok, _visual(tok), 200, cache_dir=cache)
    assert not hit
    records = json.loads(path.read_text())
    records[3]["conversations"][0]["value"] = "much longer " * 20
    path.write_text(json.dumps(records))
    changed, hit = cached_scan(load_rows(path), roots, tok, _visual(tok), 256, cache_dir=cache)
    assert not hit and changed.lengths[3] > first.lengths[3]
    # a damaged cache file is rescanned, never trusted
    for f in cache.glob("scan-*.npz"):
        f.write_bytes(b"garbage")
    _, hit = cached_scan(load_rows(path), roots, tok, _visual(tok), 256, cache_dir=cache)
    assert not hit


def test_processes_scan_strided_shares_and_merge_to_the_single_process_result(tmp_path, tok):
    rows = load_rows(_dataset(tmp_path, n=13))
    roots, visual = MediaRoots(media_root=tmp_path), _visual(tok)
    whole, _ = cached_scan(rows, roots, tok, visual, 256, cache_dir=None)
    # process 1's share, as the other process would compute it
    other = [scan_rows(rows, np.arange(1, len(rows), 2), roots, tok, visual, 256)]
    answers = iter([[False, False], None])

    def gather(obj):  # the two processes' objects, in rank order
        reply = next(answers)
        return reply if reply is not None else [obj, other]

    shared, hit = cached_scan(rows, roots, tok, visual, 256, cache_dir=tmp_path / "c", process_index=0,
                              num_processes=2, gather=gather)
    assert not hit
    _same(whole, shared)
    # one process with a cache and one without: both scan (neither waits for the other)
    answers = iter([[True, False], None])
    _, hit = cached_scan(rows, roots, tok, visual, 256, cache_dir=tmp_path / "c", process_index=0,
                         num_processes=2, gather=gather)
    assert not hit
    with pytest.raises(ValueError, match="needs a gather"):
        cached_scan(rows, roots, tok, visual, 256, cache_dir=None, num_processes=2)


def test_worker_processes_give_the_same_result(tmp_path, tok):
    rows = load_rows(_dataset(tmp_path, n=24))
    roots = MediaRoots(media_root=tmp_path)
    one, _ = cached_scan(rows, roots, tok, _visual(tok), 256, cache_dir=None, workers=1)
    two, _ = cached_scan(rows, roots, tok, _visual(tok), 256, cache_dir=None, workers=2)
    _same(one, two)


def test_the_batched_scan_agrees_with_the_per_record_path_at_the_length_limit(tmp_path, tok):
    from vlm_vision.data.record_tokens import scan_records

    path = _dataset(tmp_path, n=36)
    records = json.loads(path.read_text())
    for i in range(0, 36, 5):  # long questions: past max_length for some, cut text for others
        if records[i]["conversations"]:
            records[i]["conversations"][0]["value"] += " word" * (10 * i)
    path.write_text(json.dumps(records))
    rows = load_rows(path)
    for max_length in (40, 64, 120):
        result = scan_rows(rows, range(len(rows)), MediaRoots(media_root=tmp_path), tok, _visual(tok), max_length,
                           chunk=7)
        kept, skipped = scan_records(rows.raws, tmp_path, tok, _visual(tok), max_length)
        assert [s.reason for s in skipped] == [s[2] for s in result["skipped"]]
        kept_rows = sorted(set(range(len(rows))) - {s[0] for s in result["skipped"]})
        assert [rows.raws[k].get("id") for k in kept_rows] == [r.id for r in kept]
        assert [int(result["lengths"][k]) for k in kept_rows] == [
            len(sample_tokens(r, tok, _visual(tok), 3, max_length)[0]) for r in kept]
        assert any("visual span would be truncated" in s.reason or "no assistant tokens" in s.reason
                   for s in skipped) or max_length == 120


# ----- the batched scan against the per-record path, on random records ------------------------------


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
