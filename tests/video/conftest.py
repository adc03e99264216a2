"""Videos the decoder tests of several modules share, written once per test session."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from tests.video.reference import sequential_pyav, write_media


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, pathlib.Path]:
    """Synthetic videos and broken files by name (`tests.video.reference.write_media`)."""
    return write_media(tmp_path_factory.mktemp("videos"))


@pytest.fixture(scope="session")
def box_frames() -> list[np.ndarray]:
    """Every frame of tests/data/box.mp4, decoded sequentially by PyAV."""
    return sequential_pyav(pathlib.Path(__file__).parents[1] / "data" / "box.mp4")
