"""Shared test set-up: offline, deterministic, and small."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pathlib

import pytest
import torch

DATA = pathlib.Path(__file__).parent / "data"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def data_dir() -> pathlib.Path:
    """Folder of small real media shipped with the tests."""
    return DATA
