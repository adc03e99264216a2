"""Question files: Parquet as Video-MME ships it (columns named, a missing one named in the error), and
JSON/JSONL read through the memory-mapped store give the same questions as reading the files."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlm_vision.errors import InputError
from vlm_vision.evaluation.answers import read_questions
from vlm_vision.data.question_files import question_rows


def _videomme(path, drop=None):
    """Rows in Video-MME's columns: video_id, duration, domain, sub_category, url, videoID, question_id,
    task_type, question, options (a list of "A. text"), answer (a letter)."""
    rows = {"video_id": ["001", "001", "002"], "duration": ["short"] * 3, "domain": ["Knowledge"] * 3,
            "sub_category": ["Humanity & History"] * 3, "url": ["https://www.youtube.com/watch?v=fFjv93ACGo8"] * 3,
            "videoID": ["fFjv93ACGo8", "fFjv93ACGo8", "JKaSlAOdFw0"], "question_id": ["001-1", "001-2", "002-1"],
            "task_type": ["Counting Problem", "Information Synopsis", "Counting Problem"],
            "question": ["How many people?", "What is it about?", "How many cars?"],
            "options": [["A. 1", "B. 2", "C. 3", "D. 4"], ["A. war", "B. food", "C. sport", "D. art"],
                        ["A. 0", "B. 5", "C. 7", "D. 9"]],
            "answer": ["C", "A", "B"]}
    if drop:
        rows.pop(drop)
    pq.write_table(pa.table(rows), path)
    return path


def test_a_video_mme_parquet_file_reads_as_multiple_choice_questions(tmp_path):
    for name in ("fFjv93ACGo8.mp4", "JKaSlAOdFw0.mp4"):
        (tmp_path / name).write_bytes(b"\0")
    path = _videomme(tmp_path / "test-00000-of-00001.parquet")
    questions, bad, records = read_questions([str(path)], str(tmp_path))
    assert records == 3 and not bad
    first = questions[0]
    assert first.id == "001-1" and first.options == ("1", "2", "3", "4") and first.answer == 2
    assert first.media_path == tmp_path / "fFjv93ACGo8.mp4" and first.category == "Counting Problem"
    assert [q.id for q in questions] == ["001-1", "001-2", "002-1"]


@pytest.mark.parametrize("column, message", [("question", "no 'question' column"), ("answer", "no 'answer' column"),
                                             ("videoID", "no 'video' column")])
def test_a_parquet_file_without_a_required_column_is_refused_naming_it(tmp_path, column, message):
    path = _videomme(tmp_path / "q.parquet", drop=column)
    with pytest.raises(InputError, match=message) as e:
        list(question_rows(path))
    assert "the file has video_id" in str(e.value)
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="not a readable Parquet file"):
        list(question_rows(tmp_path / "junk.parquet"))


def test_json_questions_through_the_store_match_reading_the_file(tmp_path):
    (tmp_path / "v.mp4").write_bytes(b"\0")
    records = [{"id": f"q{i}", "video": "v.mp4", "question": f"Q{i}?", "options": ["a", "b"], "answer": i % 2}
               for i in range(5)]
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps(r) for r in records[:3]) + "\n{cut\n" +
                                      "\n".join(json.dumps(r) for r in records[3:]) + "\n")
    plain = read_questions([str(tmp_path / "q.jsonl")], str(tmp_path))
    stored = read_questions([str(tmp_path / "q.jsonl")], str(tmp_path), cache_dir=tmp_path / "cache")
    assert plain == stored and len(plain[0]) == 5 and len(plain[1]) == 1
    assert len(list((tmp_path / "cache").glob("store-*.arrow"))) == 1


def test_eval_checks_a_parquet_file_before_the_model_loads(tmp_path, capsys):
    """`vlm-vision eval --data X.parquet`: issue 28's checks (before any load) take a Parquet question file
    (the model is the next thing refused) and refuse, in one line, a .parquet file that is not Parquet."""
    from vlm_vision.commands.main import main

    good = _videomme(tmp_path / "test-00000-of-00001.parquet")
    (tmp_path / "junk.parquet").write_text('{"question": "not parquet"}\n')
    (tmp_path / "media").mkdir()
    base = ["eval", "--model", str(tmp_path / "no_model"), "--media-root", str(tmp_path / "media"), "--output-dir",
            str(tmp_path / "out")]
    assert main([*base, "--data", str(good)]) == 2
    err = capsys.readouterr().err
    assert f"(--model {tmp_path / 'no_model'})" in err and "--data" not in err, err
    assert main([*base, "--data", str(tmp_path / "junk.parquet")]) == 2
    err = capsys.readouterr().err
    assert f"vlm-vision eval: not a Parquet file (--data {tmp_path / 'junk.parquet'})" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
