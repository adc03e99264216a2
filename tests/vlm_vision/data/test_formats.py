"""Reading the community's record shapes: placeholders, messages, media folders, converter."""

from __future__ import annotations

import json

import pytest

from vlm_vision.data.formats import (
    BadSample,
    MediaRoots,
    convert_to_llava,
    normalise,
    parse_record,
    record_origin,
)


# ----- record shapes ----------------------------------------------------------------------------


def test_a_video_records_image_placeholder_reads_as_video():
    """LLaVA-Video-178K writes `<image>` in video records (LLaVA-NeXT has one placeholder for every medium)."""
    raw = {"id": "v", "video": "academic/a.mp4", "conversations": [
        {"from": "human", "value": "<image>\nWhat happens?"}, {"from": "gpt", "value": "A cat jumps."},
        {"from": "human", "value": "And then?"}, {"from": "gpt", "value": "It lands."}]}
    canon = normalise(raw)
    assert canon["kind"] == "video" and canon["media"] == ["academic/a.mp4"]
    assert canon["conversations"][0]["value"] == "<video>\nWhat happens?"
    assert [t["value"] for t in canon["conversations"][1:]] == ["A cat jumps.", "And then?", "It lands."]


def test_a_lone_medium_without_placeholder_goes_to_the_start_of_the_first_human_turn():
    raw = {"id": "p", "image": "x.png", "conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "human", "value": "Colour?"},
        {"from": "gpt", "value": "red"}, {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "yes"}]}
    turns = normalise(raw)["conversations"]
    assert [t["value"] for t in turns] == ["Be brief.", "<image>\nColour?", "red", "Sure?", "yes"]
    with pytest.raises(BadSample, match=r"found 0 <image> in human turns; expected 2"):
        normalise({**raw, "image": ["x.png", "y.png"]})


def test_multi_image_text_only_and_list_media():
    multi = normalise({"id": "m", "image": ["a.png", "b.png"], "conversations": [
        {"from": "human", "value": "<image> vs <image>: which is red?"}, {"from": "gpt", "value": "left"}]})
    assert multi["kind"] == "image" and multi["media"] == ["a.png", "b.png"]
    text = normalise({"id": "t", "conversations": [{"from": "human", "value": "hi"},
                                                   {"from": "gpt", "value": "hello"}]})
    assert text["kind"] is None and text["media"] == []
    one = normalise({"id": "l", "video": ["only.mp4"], "conversations": [
        {"from": "human", "value": "<video>\nq"}, {"from": "gpt", "value": "a"}]})
    assert one["kind"] == "video" and one["media"] == ["only.mp4"]


def test_transformers_messages_with_typed_parts():
    raw = {"id": "msg", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "video", "path": "clips/a.mp4"},
                                     {"type": "text", "text": "What colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
        {"role": "user", "content": "Sure?"}, {"role": "assistant", "content": "Yes."}]}
    canon = normalise(raw)
    assert canon == {"id": "msg", "kind": "video", "media": ["clips/a.mp4"], "conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "human", "value": "<video>\nWhat colour?"},
        {"from": "gpt", "value": "Red."}, {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes."}]}
    images = normalise({"messages": [
        {"role": "user", "content": [{"type": "image", "url": "a.png"}, {"type": "text", "text": "and"},
                                     {"type": "image", "image": "b.png"}]},
        {"role": "assistant", "content": "same"}]}, index=4)
    assert images["id"] == "#4" and images["media"] == ["a.png", "b.png"]
    assert images["conversations"][0]["value"] == "<image>\nand\n<image>"
    with pytest.raises(BadSample, match="unknown content part"):
        normalise({"messages": [{"role": "user", "content": [{"type": "audio", "path": "a.wav"}]},
                                {"role": "assistant", "content": "x"}]})
    with pytest.raises(BadSample, match="needs a 'path'"):
        normalise({"messages": [{"role": "user", "content": [{"type": "video"}]},
                                {"role": "assistant", "content": "x"}]})


def test_image_and_video_folders_beside_the_media_root(tmp_path):
    for folder in ("imgs", "vids", "root", "data"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.png").write_bytes(b"x")
        (tmp_path / folder / "x.mp4").write_bytes(b"x")
    video = {"id": "v", "video": "x.mp4", "conversations": [{"from": "human", "value": "<image>"},
                                                            {"from": "gpt", "value": "a"}]}
    image = {"id": "i", "image": "x.png", "conversations": [{"from": "human", "value": "q"},
                                                            {"from": "gpt", "value": "a"}]}
    both = MediaRoots(media_root=tmp_path / "root", image_folder=tmp_path / "imgs", video_folder=tmp_path / "vids")
    assert parse_record(video, both).media_path == tmp_path / "vids" / "x.mp4"
    assert parse_record(image, both).media_path == tmp_path / "imgs" / "x.png"
    only_root = MediaRoots(media_root=tmp_path / "root", image_folder=tmp_path / "imgs")
    assert parse_record(video, only_root).media_path == tmp_path / "root" / "x.mp4"
    fallback = parse_record(image, MediaRoots(), source="d.json#3", data_dir=tmp_path / "data")
    assert fallback.media_path == tmp_path / "data" / "x.png"
    assert record_origin(fallback) == {"id": "i", "source": "d.json#3"}
    with pytest.raises(BadSample, match="missing media: .*vids/no/x.png"):
        parse_record({**image, "image": "x.png", "video": None}, MediaRoots(image_folder=tmp_path / "vids" / "no"))



# ----- converter --------------------------------------------------------------------------------


def test_convert_writes_llava_json_from_other_shapes(tmp_path):
    records = [
        {"id": "a", "messages": [{"role": "user", "content": [{"type": "video", "path": "v.mp4"},
                                                              {"type": "text", "text": "Colour?"}]},
                                 {"role": "assistant", "content": "Red."}]},
        {"id": "b", "image": ["1.png", "2.png"], "conversations": [
            {"from": "human", "value": "<image><image> same?"}, {"from": "gpt", "value": "no"}]},
        {"id": "c", "video": "w.mp4", "conversations": [{"from": "human", "value": "Describe."},
                                                        {"from": "gpt", "value": "A dog."}]},
        {"id": "bad", "conversations": [{"from": "gpt", "value": "no question"}]},
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    n, skipped = convert_to_llava(tmp_path / "in.jsonl", tmp_path / "out" / "llava.json")
    out = json.loads((tmp_path / "out" / "llava.json").read_text())
    assert n == 3 and [(s.id, s.source) for s in skipped] == [("bad", "in.jsonl:4")]
    assert out == [
        {"id": "a", "video": "v.mp4", "conversations": [{"from": "human", "value": "<image>\nColour?"},
                                                         {"from": "gpt", "value": "Red."}]},
        {"id": "b", "image": ["1.png", "2.png"], "conversations": [
            {"from": "human", "value": "<image><image> same?"}, {"from": "gpt", "value": "no"}]},
        {"id": "c", "video": "w.mp4", "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                                         {"from": "gpt", "value": "A dog."}]},
    ]
    # reading the converted file back gives the same records
    again = [normalise(r) for r in out]
    assert [normalise(r, i) for i, r in enumerate(records[:3])] == again
    convert_to_llava(tmp_path / "in.jsonl", tmp_path / "v.json", video_placeholder="<video>")
    assert json.loads((tmp_path / "v.json").read_text())[0]["conversations"][0]["value"] == "<video>\nColour?"


def test_convert_data_command(tmp_path, capsys):
    from vlm_vision.commands.main import main

    (tmp_path / "m.yaml").write_text("datasets:\n  - json_path: a.jsonl\n    sampling_strategy: first:2\n")
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "x", "messages": [{"role": "user", "content": [{"type": "image", "path": "p.png"},
                                                              {"type": "text", "text": "q"}]},
                                 {"role": "assistant", "content": "a"}]},
        {"id": "y", "conversations": [{"from": "gpt", "value": "a"}]},
        {"id": "z", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}]))
    code = main(["convert-data", str(tmp_path / "m.yaml"), "--output", str(tmp_path / "o.json"),
                 "--skipped", str(tmp_path / "s.jsonl")])
    assert code == 0
    assert json.loads((tmp_path / "o.json").read_text()) == [
        {"id": "x", "image": "p.png", "conversations": [{"from": "human", "value": "<image>\nq"},
                                                         {"from": "gpt", "value": "a"}]}]
    assert json.loads((tmp_path / "s.jsonl").read_text()) == {
        "id": "y", "source": "a.jsonl:2", "reason": "conversation must start with a human turn"}
    assert "wrote 1 records" in capsys.readouterr().out
    assert main(["convert-data", str(tmp_path / "none.json"), "--output", str(tmp_path / "o2.json")]) == 2
