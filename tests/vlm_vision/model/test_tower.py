"""CLIPVisionTower against transformers' CLIPVisionModel: every layer, both feature modes, freezing.

The reference is `CLIPVisionModel(pixels, output_hidden_states=True).hidden_states[L]`, with the CLS
token dropped for "patch". Tiny random configs keep the grid fast; the full ViT-L/14@336
architecture runs once (slow).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from tests.vlm_vision.model.test_configs import README_TABLE
from vlm_vision import CLIPVisionTower, vision_config
from vlm_vision.model.transforms import CLIPImageTransform

TOL = 1e-5  # fp32 max abs diff against transformers


def tiny_config(**overrides) -> CLIPVisionConfig:
    """3 blocks, width 32, 2 heads, 16 px images of 4 px patches (4x4 grid)."""
    kwargs = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                  image_size=16, patch_size=4)
    return CLIPVisionConfig(**(kwargs | overrides))


def random_hf_model(config: CLIPVisionConfig) -> CLIPVisionModel:
    """A CLIPVisionModel whose every parameter (biases and LayerNorms too) is random, so a swapped or
    dropped weight changes the output."""
    model = CLIPVisionModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


CONFIGS = {
    "quick_gelu": tiny_config(),
    # Exact gelu, another LayerNorm eps, a non-square-friendly width per head (3 heads of 16).
    "gelu_eps1e-6_3heads": tiny_config(hidden_size=48, num_attention_heads=3, intermediate_size=80,
                                       hidden_act="gelu", layer_norm_eps=1e-6),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def reference(request):
    """(HF model, pixels, hidden_states) for one tiny config."""
    torch.manual_seed(1)
    model = random_hf_model(CONFIGS[request.param])
    pixels = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states
    return model, pixels, hidden


@pytest.mark.parametrize("select_feature", ["patch", "cls_patch"])
@pytest.mark.parametrize("select_layer", list(range(-4, 4)))
def test_parity_every_layer_and_mode(reference, select_layer, select_feature):
    model, pixels, hidden = reference
    assert len(hidden) == 4  # embeddings + 3 blocks, so -4..3 covers every index
    tower = CLIPVisionTower.from_transformers(model, select_layer=select_layer, select_feature=select_feature)
    out = tower(pixels)
    expected = hidden[select_layer][:, 1:] if select_feature == "patch" else hidden[select_layer]
    assert out.shape == expected.shape == (2, 16 if select_feature == "patch" else 17, model.config.hidden_size)
    assert (out - expected).abs().max().item() <= TOL


def test_penultimate_default_is_not_the_last_layer(reference):
    """Guards the test above: layers differ, so matching the right index is meaningful."""
    model, pixels, hidden = reference
    out = CLIPVisionTower.from_transformers(model)(pixels)
    assert (out - hidden[-2][:, 1:]).abs().max() <= TOL
    assert (out - hidden[-1][:, 1:]).abs().max() > 1e-2


@pytest.mark.slow
def test_full_vit_l_14_336_parity_one_image():
    """The real architecture (random weights): 577 tokens, width 1024, layer -2 without CLS."""
    torch.manual_seed(0)
    with torch.no_grad():
        model = CLIPVisionModel(vision_config("ViT-L/14@336")).eval()
        pixels = torch.randn(1, 3, 336, 336)
        expected = model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        tower = CLIPVisionTower.from_transformers(model)
        del model  # keep at most two copies of the 1.2 GB of weights alive
        out = tower(pixels)
    assert out.shape == (1, 576, 1024)
    assert len(tower.blocks) == 23
    assert (out - expected).abs().max().item() <= TOL


# ----- only the blocks up to the selected layer exist and run --------------------------------------

@pytest.mark.parametrize("select_layer, blocks", [(-1, 3), (-2, 2), (-4, 0), (0, 0), (1, 1), (3, 3)])
def test_blocks_past_selected_layer_are_not_built_or_run(select_layer, blocks):
    tower = CLIPVisionTower.from_config(tiny_config(), select_layer=select_layer)
    assert len(tower.blocks) == blocks
    calls = []
    for block in tower.blocks:
        block.register_forward_hook(lambda *_: calls.append(1))
    tower(torch.randn(1, 3, 16, 16))
    assert len(calls) == blocks


def test_full_size_tower_has_23_blocks_for_layer_minus_2():
    with torch.device("meta"):
        tower = CLIPVisionTower.from_config(vision_config("ViT-L/14@336"))
    assert len(tower.blocks) == 23  # num_layers + 1 + select_layer


def test_loading_ignores_weights_of_unbuilt_blocks():
    model = random_hf_model(tiny_config())
    tower = CLIPVisionTower.from_transformers(model, select_layer=1)
    assert len(tower.blocks) == 1
    assert not any(k.startswith("blocks.1.") for k in tower.state_dict())


@pytest.mark.parametrize("select_layer", [4, -5, 100])
def test_out_of_range_layer_is_rejected(select_layer):
    with pytest.raises(ValueError, match=rf"select_layer={select_layer}.*valid: -4\.\.3"):
        CLIPVisionTower.from_config(tiny_config(), select_layer=select_layer)


def test_unknown_select_feature_is_rejected():
    with pytest.raises(ValueError, match="select_feature.*'cls'"):
        CLIPVisionTower.from_config(tiny_config(), select_feature="cls")


# ----- frozen by default -------------------------------------------------------------------------

def test_frozen_by_default_no_grad_and_eval():
    tower = CLIPVisionTower.from_config(tiny_config())
    assert tower.frozen
    assert not any(p.requires_grad for p in tower.parameters())
    assert not tower.training
    with torch.enable_grad():
        out = tower(torch.randn(1, 3, 16, 16, requires_grad=True))
    assert not out.requires_grad and out.grad_fn is None


def test_frozen_tower_stays_in_eval_when_parent_trains_and_does_not_move():
    parent = nn.ModuleDict({"tower": CLIPVisionTower.from_config(tiny_config()), "head": nn.Linear(32, 2)})
    parent.train()
    assert parent["head"].training and not parent["tower"].training
    before = {k: v.clone() for k, v in parent["tower"].state_dict().items()}
    opt = torch.optim.SGD([p for p in parent.parameters() if p.requires_grad], lr=1.0)
    loss = parent["head"](parent["tower"](torch.randn(2, 3, 16, 16))).square().mean()
    loss.backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in parent["tower"].state_dict().items())


def test_unfreeze_lets_gradients_flow_and_train_mode_work():
    tower = CLIPVisionTower.from_config(tiny_config()).unfreeze()
    tower.train()
    assert tower.training and not tower.frozen
    assert all(p.requires_grad for p in tower.parameters())
    tower(torch.randn(2, 3, 16, 16)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tower.parameters())
    tower.freeze()
    assert not tower.training and not any(p.requires_grad for p in tower.parameters())


# ----- attributes and variants ---------------------------------------------------------------------



@pytest.mark.parametrize("name", sorted(README_TABLE))
def test_variant_attributes_and_output_shape(name):
    """Built on the meta device: shapes without the cost of 300M random weights."""
    size, patch, grid, tokens, width, _ = README_TABLE[name]
    with torch.device("meta"):
        tower = CLIPVisionTower.from_config(vision_config(name))
        cls_tower = CLIPVisionTower.from_config(vision_config(name), select_feature="cls_patch")
        out = tower(torch.zeros(2, 3, size, size))
        cls_out = cls_tower(torch.zeros(2, 3, size, size))
    assert (tower.image_size, tower.patch_size, tower.grid_size, tower.hidden_size) == (size, patch, (grid, grid), width)
    assert (tower.num_patches, cls_tower.num_patches) == (tokens, tokens + 1)
    assert out.shape == (2, tokens, width) and cls_out.shape == (2, tokens + 1, width)
    assert tower.dtype == torch.float32 and tower.device.type == "meta"
    assert isinstance(tower.image_transform, CLIPImageTransform) and tower.image_transform.image_size == size


def test_dtype_and_device_follow_the_weights():
    tower = CLIPVisionTower.from_config(tiny_config()).to(torch.bfloat16)
    assert tower.dtype == torch.bfloat16 and tower.device == torch.device("cpu")
    out = tower(torch.randn(1, 3, 16, 16))  # fp32 pixels are cast to the tower's dtype
    assert out.dtype == torch.bfloat16


def test_image_transform_feeds_the_tower():
    tower = CLIPVisionTower.from_config(tiny_config())
    frames = torch.randint(0, 256, (3, 20, 24, 3), dtype=torch.uint8)
    assert tower(tower.image_transform(frames)).shape == (3, 16, 32)


# ----- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(3, 16, 16), (1, 3, 32, 32), (1, 1, 16, 16), (1, 16, 16, 3)])
def test_wrong_pixel_shape(shape):
    tower = CLIPVisionTower.from_config(tiny_config())
    with pytest.raises(ValueError, match=rf"\[B, 3, 16, 16\], got \[{', '.join(map(str, shape))}\]"):
        tower(torch.zeros(shape))


def test_uint8_pixels_are_rejected():
    tower = CLIPVisionTower.from_config(tiny_config())
    with pytest.raises(TypeError, match="floating point.*torch.uint8.*image_transform"):
        tower(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))


def test_non_tensor_pixels_are_rejected():
    tower = CLIPVisionTower.from_config(tiny_config())
    with pytest.raises(TypeError, match="torch.Tensor.*got ndarray"):
        tower(torch.zeros(1, 3, 16, 16).numpy())


def test_patch_size_must_divide_image_size():
    with pytest.raises(ValueError, match="image_size 18 is not a multiple of patch_size 4"):
        CLIPVisionTower.from_config(tiny_config(image_size=18))


# ----- compile -----------------------------------------------------------------------------------

def test_compile_traces_the_forward_as_one_graph():
    """Dynamo only (backend="eager"): the forward compiles without graph breaks, and compile() chains."""
    tower = CLIPVisionTower.from_config(tiny_config())
    pixels = torch.randn(2, 3, 16, 16)
    eager = tower(pixels)
    assert tower.compile(backend="eager", fullgraph=True) is tower
    torch.testing.assert_close(tower(pixels), eager, atol=TOL, rtol=0)


_INDUCTOR_CHECK = """
import torch
from tests.vlm_vision.model.test_tower import TOL, tiny_config
from vlm_vision import CLIPVisionTower
torch.manual_seed(0)
tower = CLIPVisionTower.from_config(tiny_config(), select_feature="cls_patch")
pixels = torch.randn(2, 3, 16, 16)
eager = tower(pixels)
torch.testing.assert_close(tower.compile()(pixels), eager, atol=TOL, rtol=0)
print("compiled matches eager")
"""


@pytest.mark.slow
def test_compile_with_inductor_matches_eager():
    """The default backend generates and builds C++ on the CPU (about 35 s on 2 cores).

    It runs in a fresh interpreter: inductor's C++ build imports setuptools, whose distutils shim
    refuses to load once something earlier in the test session has loaded the standard library's
    distutils (seen in the full suite, not in this file alone)."""
    repo = pathlib.Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, "-c", _INDUCTOR_CHECK], cwd=repo, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "PYTHONPATH": str(repo)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "compiled matches eager" in done.stdout
