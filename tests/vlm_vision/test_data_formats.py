"""Reading the community's data shapes: mixtures, sampling, file patterns, placeholders, messages, converter."""

from __future__ import annotations

import json

import pytest

from vlm_vision.data_formats import (
    BadSample,
    MediaRoots,
    Skipped,
    convert_to_llava,
    data_files,
    load_rows,
    normalise,
    parse_record,
    parse_strategy,
    record_origin,
    sample_positions,
)


def _qa(i, **media):
    return {"id": f"r{i}", **media, "conversations": [{"from": "human", "value": f"q{i}"},
                                                      {"from": "gpt", "value": f"a{i}"}]}


def _write_json(path, records):
    path.write_text(json.dumps(records))
    return path


# ----- sampling strategies (hand-computed) ---------------------------------------------------------


@pytest.mark.parametrize("strategy, n, expected", [
    ("all", 7, ("all", 7)), ("first:3", 7, ("first", 3)), ("end:2", 7, ("end", 2)),
    ("random:5", 7, ("random", 5)), ("first:50%", 7, ("first", 4)),  # ceil(3.5)
    ("end:10%", 95, ("end", 10)),  # ceil(9.5)
    ("random:100%", 7, ("random", 7)), ("first:20", 7, ("first", 7)),  # more than there is: all of them
    ("end:0", 7, ("end", 0)),  # nothing (LLaVA-NeXT's [-0:] would keep everything)
])
def test_parse_strategy(strategy, n, expected):
    assert parse_strategy(strategy, n) == expected


@pytest.mark.parametrize("bad", ["some", "first", "first:x", "first:-1", "all:3", "random:1.5"])
def test_parse_strategy_rejects(bad):
    with pytest.raises(ValueError, match="sampling_strategy"):
        parse_strategy(bad, 10)


def test_sample_positions():
    assert sample_positions(6, "first:2", 0) == [0, 1]
    assert sample_positions(6, "end:2", 0) == [4, 5]
    assert sample_positions(6, "all", 0) == list(range(6))
    picked = sample_positions(100, "random:10", seed=3)
    assert len(set(picked)) == 10 and picked == sorted(picked) and picked == sample_positions(100, "random:10", 3)
    assert picked != sample_positions(100, "random:10", seed=4)


def test_yaml_mixture_with_every_strategy_gives_the_expected_counts(tmp_path):
    (tmp_path / "sub").mkdir()
    _write_json(tmp_path / "a.json", [_qa(i) for i in range(10)])
    _write_json(tmp_path / "sub" / "b.json", [_qa(100 + i) for i in range(20)])
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(_qa(200 + i)) + "\n" for i in range(8)))
    _write_json(tmp_path / "d.json", [_qa(300 + i) for i in range(40)])
    (tmp_path / "mix.yaml").write_text(
        "datasets:\n"
        "  - json_path: a.json\n"                 # default: all -> 10
        "  - json_path: sub/b.json\n    sampling_strategy: first:5\n"     # 5
        "  - json_path: c.jsonl\n    sampling_strategy: end:25%\n"        # ceil(2.0) = 2
        f"  - json_path: {tmp_path / 'd.json'}\n    sampling_strategy: random:10%\n")  # ceil(4.0) = 4
    rows = load_rows(tmp_path / "mix.yaml", seed=1)
    ids = [r["id"] for r in rows.raws]
    assert len(ids) == 10 + 5 + 2 + 4
    assert ids[:15] == [f"r{i}" for i in range(10)] + [f"r{100 + i}" for i in range(5)]
    assert ids[15:17] == ["r206", "r207"]
    drawn = ids[17:]
    assert len(set(drawn)) == 4 and all(300 <= int(i[1:]) < 340 for i in drawn)
    assert [r["id"] for r in load_rows(tmp_path / "mix.yaml", seed=1).raws] == ids  # seeded: the same draw
    assert [r["id"] for r in load_rows(tmp_path / "mix.yaml", seed=2).raws][17:] != drawn
    # where each record came from: file and position (JSON list index, JSONL line number)
    assert rows.source(0) == "a.json#0" and rows.source(15) == "c.jsonl:7" and rows.source(14) == "b.json#4"


def test_mixture_errors_name_the_file(tmp_path):
    (tmp_path / "m.yaml").write_text("datasets:\n  - sampling_strategy: all\n")
    with pytest.raises(ValueError, match="m.yaml: entry 0 has no json_path"):
        data_files(tmp_path / "m.yaml")
    (tmp_path / "m.yaml").write_text("datasets:\n  - json_path: a.json\n    sampling_strategy: top:3\n")
    with pytest.raises(ValueError, match="top:3"):
        data_files(tmp_path / "m.yaml")
    (tmp_path / "m.yaml").write_text("other: 1\n")
    with pytest.raises(ValueError, match="'datasets:' list"):
        data_files(tmp_path / "m.yaml")


def test_brace_pattern_names_several_json_files(tmp_path):
    _write_json(tmp_path / "llava_a.json", [_qa(1), _qa(2)])
    _write_json(tmp_path / "llava_bb.json", [_qa(3)])
    spec = f"{tmp_path}/llava_{{a,bb}}.json"
    assert data_files(spec) == [(tmp_path / "llava_a.json", "all"), (tmp_path / "llava_bb.json", "all")]
    assert [r["id"] for r in load_rows(spec).raws] == ["r1", "r2", "r3"]


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


def test_a_bad_jsonl_line_keeps_its_file_and_line(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps(_qa(1)) + "\n\n{oops\n")
    rows = load_rows(tmp_path / "d.jsonl")
    assert isinstance(rows.raws[1], Skipped) and rows.raws[1].source == "d.jsonl:3" and rows.source(1) == "d.jsonl:3"


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
    from vlm_vision.cli import main

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
