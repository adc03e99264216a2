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


def pytest_collection_modifyitems(config, items):
    """Skip `gpu`-marked tests when they would need CUDA and there is none (CI has none).

    They target CUDA unless `VLM_VISION_TEST_DEVICE` names another device (see tests/gpu/devices.py).
    """
    from tests.gpu.devices import DEVICE, DEVICE_ENV

    if DEVICE.type != "cuda" or torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=f"needs CUDA: torch.cuda.is_available() is False "
                                   f"({DEVICE_ENV}=cpu runs these tests on the CPU instead)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
