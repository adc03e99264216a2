"""`vlm-vision data-stats`: the scan training runs, summarised before a run; bad input is one line, exit 2."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from tests.vlm_vision.train_fixtures import write_colour_dataset, write_llm_folder, write_tower_folder
from vlm_vision.commands.main import main


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("stats")
    data = write_colour_dataset(root / "media", n=6, frames=4)
    records = [json.loads(line) for line in data.read_text().splitlines()]
    records += [{"id": "gone", "video": "missing.mp4", "conversations": records[0]["conversations"]},
                {"id": "long", "conversations": [{"from": "human", "value": "Say it."},
                                                 {"from": "gpt", "value": "word " * 400}]},
                {"id": "unanswered", "conversations": [{"from": "human", "value": "word " * 400},
                                                       {"from": "gpt", "value": "ok"}]},
                {"id": "empty", "conversations": []}]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    return {"llm": str(write_llm_folder(root / "llm")), "tower": str(write_tower_folder(root / "tower")),
            "data": str(data), "media": str(root / "media")}


def test_data_stats_reports_what_training_keeps_skips_and_cuts(parts, tmp_path, capsys):
    argv = ["data-stats", parts["data"], "--llm", parts["llm"], "--tower", parts["tower"], "--num-frames", "4",
            "--max-length", "200", "--media-root", parts["media"], "--output-dir", str(tmp_path / "run")]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    stats = json.loads((tmp_path / "run" / "data_stats.json").read_text())
    assert stats["records"] == 10 and stats["kept"] == 7 and stats["skipped"] == 3
    assert stats["skipped_by_reason"] == {"missing media": 1, "empty conversation": 1,
                                          "no assistant tokens within max_length=200": 1}
    assert stats["modalities"] == {"text": 1, "image": 0, "video": 6}
    assert stats["cut_to_max_length"] == 1 and stats["length"]["max"] == 200  # the long text is cut to fit
    assert stats["tokens_per_epoch"] > 6 * 4 * 4
    assert Image.open(tmp_path / "run" / "token_lengths.png").size == (900, 420)
    assert "10 records, 7 kept, 3 skipped (scan computed)" in printed and "tokens per epoch" in printed
    # the same scan and cache as training: a second call reads it
    assert main(argv) == 0
    assert "(scan read from the cache)" in capsys.readouterr().out
    assert len(list((tmp_path / "run" / "data-scan").glob("scan-*.npz"))) == 1
    assert len(list((tmp_path / "run" / "data-scan").glob("store-*.arrow"))) == 1


@pytest.mark.parametrize("bad, message", [("missing.json", "data file not found (DATA missing.json)"),
                                          ("object.json", "a JSON object, not a list (DATA "),
                                          ("cut.json", "data spec cannot be read (")])
def test_bad_data_is_one_line_and_exit_2(parts, tmp_path, capsys, bad, message):
    """The first two are refused by the checks before any load; a file that starts well but is cut
    short is refused by the reader, during the scan."""
    (tmp_path / "object.json").write_text('{"not": "a list"}')
    (tmp_path / "cut.json").write_text('[{"id": "a", "conversations": []}, {"id": "b", "conv')
    path = bad if bad == "missing.json" else str(tmp_path / bad)
    code = main(["data-stats", path, "--llm", parts["llm"], "--tower", parts["tower"], "--output-dir",
                 str(tmp_path / "o")])
    out = capsys.readouterr()
    assert code == 2 and f"vlm-vision data-stats: {message}" in out.out + out.err, out.err
    assert "Traceback" not in out.out + out.err
