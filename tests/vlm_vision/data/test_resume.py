"""A resumed run whose data file changed stops with a message naming the file (not training on other records)."""

from __future__ import annotations

import pytest

from tests.vlm_vision.training.test_loop import config
from tests.vlm_vision.train_fixtures import write_colour_dataset, write_llm_folder, write_tower_folder
from vlm_vision import train
from vlm_vision.errors import InputError


@pytest.mark.slow
def test_a_resume_on_a_changed_data_file_stops_and_an_unchanged_one_resumes(tmp_path):
    data = write_colour_dataset(tmp_path / "media", n=4, frames=4)
    parts = {"llm": str(write_llm_folder(tmp_path / "llm")), "tower": str(write_tower_folder(tmp_path / "tower")),
             "data": str(data), "media_root": str(tmp_path / "media")}
    train(config(parts, tmp_path / "run", max_steps=2, save_every=2))
    assert (tmp_path / "run" / "data-files.json").is_file()
    assert len(list((tmp_path / "run" / "data-scan").glob("store-*.arrow"))) == 1
    train(config(parts, tmp_path / "run", max_steps=3, save_every=3, resume=True))  # same data: resumes
    data.write_text(data.read_text().replace("mostly", "largely"))
    with pytest.raises(InputError, match=r"data file changed since the run began \(.*train\.jsonl\)"):
        train(config(parts, tmp_path / "run", max_steps=4, resume=True))
