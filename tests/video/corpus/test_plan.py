"""Which inputs are videos, what each output is named, which process writes it (`video.corpus.plan`)."""

from __future__ import annotations

import pathlib

import pytest

from tests.video.synth import make_video_folder
from video.corpus.plan import find_inputs, find_videos, output_name, shard


@pytest.fixture
def videos(tmp_path) -> pathlib.Path:
    """A folder of three small good videos, one of them in a subfolder."""
    return make_video_folder(tmp_path / "videos")


def test_find_videos_expands_folders_and_lists(tmp_path, videos):
    listing = tmp_path / "list.txt"
    listing.write_text("# my videos\nvideos/a.mp4\n\nvideos/missing.mp4\n")
    (videos / "notes.txt").write_text("not a video")
    found = find_videos([listing, videos])
    assert found == [tmp_path / "videos/a.mp4", tmp_path / "videos/missing.mp4", videos / "b.mkv",
                     videos / "sub" / "c.mp4"]  # a.mp4 once, notes.txt ignored, missing kept (reported later)


def test_output_names_come_from_the_path_below_the_input(tmp_path, videos):
    names = {f.path.name: output_name(f.relative) for f in find_inputs([videos, tmp_path / "elsewhere.mp4"])}
    assert names == {"a.mp4": "a", "b.mkv": "b", "c.mp4": "sub__c", "elsewhere.mp4": "elsewhere"}
    listing = tmp_path / "list.txt"
    listing.write_text("videos/sub/c.mp4\nvideos/sub\n")
    assert [output_name(f.relative) for f in find_inputs([listing])] == ["videos__sub__c"]  # c once, first name
    assert output_name(pathlib.PurePath("x/y/clip.v2.mp4")) == "x__y__clip.v2"


def test_shard_gives_every_item_to_exactly_one_process():
    items = list(range(11))
    parts = [shard(items, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == items
    assert parts[1] == [1, 4, 7, 10]
