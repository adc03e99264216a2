"""Question files for eval: JSON / JSONL (read through the training store) and Parquet, as benchmarks ship them.

JSON lists and JSONL files go through `vlm_vision.data.store` when a cache folder is given: the same
memory-mapped store training uses, built once per machine, so every eval process reads one copy.

A Parquet file (Video-MME ships `videomme/test-*.parquet`) is read with pyarrow, one row per
question, its columns named as `vlm_vision.evaluation.questions`'s fields. The columns it must have:

    question  question | query | prompt
    answer    answer | label | correct_answer | gt_answer | truth
    medium    video | video_path | video_file | image | image_path | image_file
              | videoID (Video-MME: the video is `<videoID>.mp4` under the media root)

and, for multiple choice, options | candidates | choices (a list per row, "A. text" prefixes are
removed). Optional: question_id (or id, qid, uid), task_type (or category, question_type, type),
start, end. A file without one of the required columns is refused, naming the column
and the columns it has.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vlm_vision.errors import InputError
from vlm_vision.data.files import read_records

__all__ = ["PARQUET_REQUIRED", "VIDEO_ID_COLUMN", "question_rows", "read_parquet_questions"]

VIDEO_ID_COLUMN = "videoID"
PARQUET_REQUIRED = {
    "question": ("question", "query", "prompt"),
    "answer": ("answer", "label", "correct_answer", "gt_answer", "truth"),
    "medium": ("video", "video_path", "video_file", "image", "image_path", "image_file", VIDEO_ID_COLUMN),
}
"""Each required field and the column names that satisfy it (the first present is read)."""


def read_parquet_questions(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a Parquet question file as records `parse_question` reads.

    Raises:
        InputError: for a file that is not Parquet, or that lacks a required column.
    """
    import pyarrow.parquet as pq  # lazy: only Parquet files need it

    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise InputError("not a readable Parquet file", path, "a Parquet table of questions",
                         hint=str(e).splitlines()[0]) from e
    columns = table.column_names
    for field, names in PARQUET_REQUIRED.items():
        if not any(n in columns for n in names):
            raise InputError(f"no {names[0]!r} column", path,
                             f"a {field} column named one of {', '.join(names)}; the file has {', '.join(columns)}")
    rows = table.to_pylist()
    media = PARQUET_REQUIRED["medium"][:-1]
    if not any(n in columns for n in media):  # Video-MME: the video file is named by its YouTube id
        for row in rows:
            row["video"] = f"{row[VIDEO_ID_COLUMN]}.mp4"
    return rows


def question_rows(path: str | Path, cache_dir: str | Path | None = None) -> Iterator[Any]:
    """Each record of a question file, in order: Parquet rows, or JSON/JSONL records (through the
    memory-mapped store in `cache_dir` when given; a bad JSONL line is a `Skipped`)."""
    path = Path(path)
    if path.suffix == ".parquet":
        yield from read_parquet_questions(path)
        return
    if cache_dir is None:
        yield from read_records(path)
        return
    from vlm_vision.data.store import open_store  # lazy: the store imports `datasets`

    store = open_store(path, cache_dir)
    for i in range(len(store)):
        yield store.raw(i)
