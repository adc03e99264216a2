"""Projector checkpoints (`projector.checkpoints`): the LLaVA and transformers key layouts read and
written, every key consumed and every shape checked, files read weights-only."""

import pickle

import pytest
import torch
from torch import nn

from projector import build_projector, load_projector, save_projector


def _randomize(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    return module


# ----- loading ------------------------------------------------------------------------------------


@pytest.fixture
def trained():
    return _randomize(build_projector("mlp2x_gelu", 6, 10))


def _assert_same(a: nn.Module, b: nn.Module):
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka


@pytest.mark.parametrize("prefix", ["model.mm_projector.", "mm_projector.", "base_model.model.model.mm_projector.", ""])
def test_loads_llava_layouts_and_ignores_foreign_keys(trained, prefix):
    sd = {prefix + k: v for k, v in trained.state_dict().items()}
    sd |= {"model.layers.0.mlp.up_proj.weight": torch.zeros(3), "lm_head.weight": torch.zeros(2, 2)}
    if prefix:  # bare keys only count when no prefixed projector keys exist
        sd["0.weight"] = torch.zeros(1)
    fresh = build_projector("mlp2x_gelu", 6, 10)
    assert load_projector(fresh, sd) is fresh
    _assert_same(fresh, trained)


@pytest.mark.parametrize("prefix", ["multi_modal_projector.", "model.multi_modal_projector."])
def test_loads_transformers_layouts(trained, prefix):
    sd = {f"{prefix}linear_{i}.{p}": trained[2 * (i - 1)].state_dict()[p] for i in (1, 2) for p in ("weight", "bias")}
    sd["model.vision_tower.embeddings.class_embedding"] = torch.zeros(6)
    _assert_same(load_projector(build_projector("mlp2x_gelu", 6, 10), sd), trained)


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".safetensors"])
@pytest.mark.parametrize("layout", ["llava", "transformers"])
def test_file_round_trip(tmp_path, trained, suffix, layout):
    path = save_projector(trained, tmp_path / "sub" / f"mm_projector{suffix}", layout=layout)
    _assert_same(load_projector(build_projector("mlp2x_gelu", 6, 10), path), trained)


def test_saved_llava_file_has_llavas_full_names(tmp_path, trained):
    path = save_projector(trained, tmp_path / "mm_projector.bin")
    assert sorted(torch.load(path, weights_only=True)) == [
        "model.mm_projector.0.bias", "model.mm_projector.0.weight",
        "model.mm_projector.2.bias", "model.mm_projector.2.weight"]


def test_linear_round_trip(tmp_path):
    linear = _randomize(build_projector("linear", 4, 5))
    path = save_projector(linear, tmp_path / "p.safetensors")
    _assert_same(load_projector(build_projector("linear", 4, 5), path), linear)
    with pytest.raises(ValueError, match="only mlp2x_gelu.*linear"):
        save_projector(linear, tmp_path / "q.safetensors", layout="transformers")


def test_missing_key_named_as_in_the_source(trained):
    sd = {f"model.mm_projector.{k}": v for k, v in trained.state_dict().items() if k != "2.bias"}
    with pytest.raises(ValueError, match=r"missing projector keys \['model.mm_projector.2.bias'\]"):
        load_projector(build_projector("mlp2x_gelu", 6, 10), sd)
    sd = {"multi_modal_projector.linear_1.weight": torch.zeros(10, 6), "multi_modal_projector.linear_1.bias": torch.zeros(10)}
    with pytest.raises(ValueError, match=r"multi_modal_projector.linear_2.bias.*multi_modal_projector.linear_2.weight"):
        load_projector(build_projector("mlp2x_gelu", 6, 10), sd)


def test_misshaped_key_named_with_both_shapes(trained):
    sd = {f"model.mm_projector.{k}": v for k, v in trained.state_dict().items()}
    with pytest.raises(ValueError, match=r"model.mm_projector.0.weight has shape \(10, 6\).*expects \(10, 8\)"):
        load_projector(build_projector("mlp2x_gelu", 8, 10), sd)


def test_deeper_checkpoint_is_refused(trained):
    deeper = _randomize(build_projector("mlp3x_gelu", 6, 10))
    sd = {f"model.mm_projector.{k}": v for k, v in deeper.state_dict().items()}
    with pytest.raises(ValueError, match=r"\['model.mm_projector.4.bias', 'model.mm_projector.4.weight'\].*mlp2x_gelu"):
        load_projector(build_projector("mlp2x_gelu", 6, 10), sd)


def test_no_projector_keys(trained):
    with pytest.raises(ValueError, match="no projector weights in the state dict"):
        load_projector(build_projector("mlp2x_gelu", 6, 10), {"lm_head.weight": torch.zeros(1)})


def test_two_layouts_or_two_projectors_are_ambiguous(trained):
    sd = {f"model.mm_projector.{k}": v for k, v in trained.state_dict().items()}
    with pytest.raises(ValueError, match="both LLaVA and transformers layouts"):
        load_projector(trained, sd | {"multi_modal_projector.linear_1.weight": torch.zeros(10, 6)})
    with pytest.raises(ValueError, match="more than one projector"):
        load_projector(trained, sd | {"mm_projector.0.weight": torch.zeros(10, 6)})


def test_files_are_read_weights_only(tmp_path):
    path = tmp_path / "evil.bin"
    torch.save({"model.mm_projector.0.weight": torch.zeros(2), "payload": _Payload()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_projector(build_projector("mlp2x_gelu", 6, 10), path)


def test_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.bin"):
        load_projector(build_projector("linear", 2, 2), tmp_path / "nothere.bin")
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="expected a .safetensors file"):
        load_projector(build_projector("linear", 2, 2), tmp_path / "w.npz")
    with pytest.raises(ValueError, match="layout must be"):
        save_projector(build_projector("linear", 2, 2), tmp_path / "w.bin", layout="hf")


class _Payload:
    pass
