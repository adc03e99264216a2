"""Source identity and weight fingerprints: what a token file records about where it came from."""

from __future__ import annotations

import hashlib
import os

import torch

from video.provenance import (
    FINGERPRINT_SPAN,
    describe_differences,
    differences,
    source_fingerprint,
    source_identity,
    weights_fingerprint,
)


def test_fingerprint_is_size_plus_first_and_last_mib(tmp_path):
    data = os.urandom(3 * FINGERPRINT_SPAN + 17)
    path = tmp_path / "v.mp4"
    path.write_bytes(data)
    expected = hashlib.sha256(len(data).to_bytes(8, "big") + data[:FINGERPRINT_SPAN] + data[-FINGERPRINT_SPAN:])
    assert source_fingerprint(path) == expected.hexdigest()
    small = tmp_path / "s.mp4"
    small.write_bytes(b"abc")
    assert source_fingerprint(small) == hashlib.sha256((3).to_bytes(8, "big") + b"abc").hexdigest()


def test_a_cut_or_completed_download_changes_the_identity(tmp_path):
    path = tmp_path / "v.mp4"
    data = os.urandom(2 * FINGERPRINT_SPAN + 5)
    path.write_bytes(data[: FINGERPRINT_SPAN + 1])
    cut = source_identity(path)
    path.write_bytes(data)
    whole = source_identity(path)
    assert cut["source_path"] == whole["source_path"] == str(path.resolve())
    assert cut["source_size"] != whole["source_size"] and cut["source_fingerprint"] != whole["source_fingerprint"]


def test_weights_fingerprint_sees_every_number_but_not_the_loading_dtype():
    torch.manual_seed(0)
    a = torch.nn.Linear(4, 3)
    b = torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    assert weights_fingerprint(a) == weights_fingerprint(b)
    with torch.no_grad():
        b.weight[2, 3] += 0.01
    assert weights_fingerprint(a) != weights_fingerprint(b)
    half = torch.nn.Linear(4, 3).to(torch.bfloat16)
    half.load_state_dict(a.state_dict())  # the same weights loaded in bfloat16
    assert weights_fingerprint(half) == weights_fingerprint(a)
    fp16 = torch.nn.Linear(4, 3).to(torch.float16)
    fp16.load_state_dict(a.state_dict())  # loaded in float16: the float32 run reproduces it by casting first
    assert weights_fingerprint(fp16) == weights_fingerprint(a, loaded_dtype=torch.float16)


def test_differences_name_each_key_with_both_values():
    recorded = {"dtype": "float32", "grid": [24, 24], "layer": -2}
    current = {"dtype": "bfloat16", "grid": (24, 24), "layer": -2, "allow_partial": False}
    differ = differences(recorded, current)
    assert differ == {"dtype": ("float32", "bfloat16"), "allow_partial": (None, False)}
    assert describe_differences(differ) == "dtype: 'float32' there, 'bfloat16' now; allow_partial: None there, False now"
