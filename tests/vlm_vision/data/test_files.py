"""Data files and mixtures: sampling strategies, YAML mixtures, file patterns, record positions."""

from __future__ import annotations

import json

import pytest

from vlm_vision.data.files import Skipped, data_files, load_rows, parse_strategy, sample_positions


def _qa(i):
    return {"id": f"r{i}", "conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}


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


def test_a_bad_jsonl_line_keeps_its_file_and_line(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps(_qa(1)) + "\n\n{oops\n")
    rows = load_rows(tmp_path / "d.jsonl")
    assert isinstance(rows.raws[1], Skipped) and rows.raws[1].source == "d.jsonl:3" and rows.source(1) == "d.jsonl:3"

