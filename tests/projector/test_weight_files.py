"""The one reader of weight files: formats by content, key filters, sharded folders, weights only."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from projector.weight_files import UnsafeWeightsError, read_weight_file, read_weights, sniff, weight_keys

TENSORS = {"a.weight": torch.arange(6.0).view(2, 3), "b.bias": torch.ones(2), "c.weight": torch.zeros(1)}


def _assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k


@pytest.mark.parametrize("name", ["w.safetensors", "w.bin", "w.pt", "named-oddly.npz"])
def test_formats_are_read_off_the_content(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".safetensors"):
        save_file(TENSORS, path)
    else:
        torch.save(TENSORS, path)
    assert sniff(path) == ("safetensors" if name.endswith(".safetensors") else "zip")
    _assert_same(read_weight_file(path), TENSORS)
    _assert_same(read_weight_file(path, keep=lambda k: k.endswith("weight")),
                 {k: v for k, v in TENSORS.items() if k.endswith("weight")})


@pytest.mark.parametrize("name", ["w.safetensors", "w.bin"])
def test_keys_are_read_without_the_tensors_they_name(tmp_path, name):
    path = tmp_path / name
    save_file(TENSORS, path) if name.endswith(".safetensors") else torch.save({"state_dict": TENSORS}, path)
    assert sorted(weight_keys(path)) == sorted(TENSORS)
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        weight_keys(tmp_path / "missing.bin")


def test_training_checkpoints_are_unwrapped(tmp_path):
    torch.save({"state_dict": TENSORS, "epoch": 3}, tmp_path / "ckpt.pt")
    _assert_same(read_weight_file(tmp_path / "ckpt.pt"), TENSORS)


def test_sharded_folder_reads_only_the_shards_it_needs(tmp_path):
    save_file({"a.weight": TENSORS["a.weight"]}, tmp_path / "model-1.safetensors")
    save_file({"b.bias": TENSORS["b.bias"]}, tmp_path / "model-2.safetensors")
    weight_map = {"a.weight": "model-1.safetensors", "b.bias": "model-2.safetensors", "c.weight": "model-3.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    # model-3 is missing, but holds no kept key, so it is never opened
    _assert_same(read_weights(tmp_path, keep=lambda k: k != "c.weight"),
                 {k: TENSORS[k] for k in ("a.weight", "b.bias")})
    with pytest.raises(FileNotFoundError, match="lists shard model-3.safetensors, which is missing"):
        read_weights(tmp_path)


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model.safetensors, pytorch_model.bin or their index"):
        read_weights(tmp_path)
    (tmp_path / "notes.pt").write_text("not weights")
    with pytest.raises(ValueError, match="notes.pt is not a checkpoint: expected a .safetensors file"):
        read_weight_file(tmp_path / "notes.pt")
    (tmp_path / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(ValueError, match="has no 'weight_map'"):
        read_weights(tmp_path)


class _Payload:
    pass


def test_pickled_objects_are_refused_as_both_error_kinds(tmp_path):
    torch.save({"a": torch.zeros(1), "payload": _Payload()}, tmp_path / "evil.bin")
    with pytest.raises(UnsafeWeightsError, match="weights_only=True") as caught:
        read_weight_file(tmp_path / "evil.bin")
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, pickle.UnpicklingError)
