"""What `vlm-vision extract` reports (`video.corpus.report`): manifest lines, the ranks' manifests
merged into one, and the summary on stdout."""

from __future__ import annotations

import json
import re
from pathlib import Path

from video.corpus.report import (
    MANIFEST,
    Outcome,
    append_line,
    manifest_path,
    merge_rank_manifests,
    plural,
    print_summary,
    record,
)


def test_one_manifest_alone_and_one_per_rank_under_several_processes(tmp_path):
    assert manifest_path(tmp_path, 0, 1) == tmp_path / MANIFEST
    assert manifest_path(tmp_path, 2, 4) == tmp_path / "manifest.rank2.jsonl"


def test_rank_manifests_merge_into_one_in_rank_order(tmp_path):
    append_line(tmp_path / "manifest.rank1.jsonl", {"video": "b.mp4"})
    append_line(tmp_path / "manifest.rank0.jsonl", {"video": "a.mp4"})
    (tmp_path / "manifest.rank2.jsonl").write_text('{"video": "c.mp4"}')  # a last line cut before its newline
    (tmp_path / "manifest.rank3.jsonl").write_text("")
    append_line(tmp_path / MANIFEST, {"video": "earlier.mp4"})  # a line of an earlier run stays first
    merge_rank_manifests(tmp_path)
    lines = (tmp_path / MANIFEST).read_text().splitlines()
    assert [json.loads(line)["video"] for line in lines] == ["earlier.mp4", "a.mp4", "b.mp4", "c.mp4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST]


def test_a_record_holds_what_is_known_of_the_outcome():
    done = record(Outcome(Path("/v/a.mp4"), Path("/out/a.pt"), "ok", shape=(8, 144, 1024), extra={"frames": 8}))
    assert {k: v for k, v in done.items() if k != "time"} == {
        "video": "/v/a.mp4", "output": "a.pt", "status": "ok", "tokens_shape": [8, 144, 1024], "frames": 8}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", done["time"])
    failed = record(Outcome(Path("b.mp4"), Path("b.pt"), "error", reason="VideoDecodeError: empty"))
    assert failed["reason"] == "VideoDecodeError: empty" and "tokens_shape" not in failed


def test_plural():
    assert (plural(1, "video"), plural(0, "video"), plural(3, "video")) == ("1 video", "0 videos", "3 videos")


def test_the_summary_names_each_video_then_the_counts_and_the_failures(tmp_path, capsys):
    outcomes = [
        Outcome(Path("a.mp4"), tmp_path / "a.pt", "ok", shape=(8, 144, 1024)),
        Outcome(Path("b.mp4"), tmp_path / "b.pt", "partial", shape=(4, 144, 1024)),
        Outcome(Path("c.mp4"), tmp_path / "c.pt", "skipped-existing", shape=(8, 144, 1024)),
        Outcome(Path("/v/d.mp4"), tmp_path / "d.pt", "error", reason="VideoDecodeError: truncated"),
    ]
    print_summary(outcomes, tmp_path, 1, 2, " [tag]", seconds=3.0, loop_seconds=2.0, frames=12)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[process 1/2] a.mp4: tokens (8, 144, 1024) -> a.pt"
    assert lines[1] == "[process 1/2] b.mp4: tokens (4, 144, 1024) (PARTIAL: the file is truncated) -> b.pt"
    assert lines[2] == "[process 1/2] c.mp4: tokens (8, 144, 1024) (already done) -> c.pt"
    assert lines[3] == (f"[process 1/2] 2 extracted (1 partial), 1 already done, 1 failed in 3.0 s (1.00 videos/s, "
                        f"6.0 frames/s after loading the tower) [tag]; outputs in {tmp_path}")
    assert lines[4:] == [f"[process 1/2] failed videos (see {tmp_path / MANIFEST}):",
                         "[process 1/2]   /v/d.mp4: VideoDecodeError: truncated"]
