"""The projector table (`projector.builders`): LLaVA's parameter names, the kinds parsed from their
names, and the mlp2x_gelu projector against transformers' LLaVA projector."""

import pytest
import torch
from torch import nn
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from projector import build_projector, load_projector
from projector.builders import parse_kind, projector_kind


def _randomize(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    return module


@pytest.mark.parametrize("kind, keys", [
    ("linear", ["bias", "weight"]),
    ("mlp1x_gelu", ["0.bias", "0.weight"]),
    ("mlp2x_gelu", ["0.bias", "0.weight", "2.bias", "2.weight"]),
    ("mlp3x_gelu", ["0.bias", "0.weight", "2.bias", "2.weight", "4.bias", "4.weight"]),
    ("identity", []),
])
def test_parameter_names_are_llavas_without_prefix(kind, keys):
    dim_in = 16 if kind == "identity" else 8
    proj = build_projector(kind, dim_in, 16)
    assert sorted(proj.state_dict()) == keys
    assert projector_kind(proj) == kind
    assert proj(torch.randn(2, 5, dim_in)).shape == (2, 5, 16)


def test_mlp2x_shapes_and_exact_gelu():
    proj = build_projector("mlp2x_gelu", 1024, 4096)
    assert proj[0].weight.shape == (4096, 1024) and proj[2].weight.shape == (4096, 4096)
    assert sum(p.numel() for p in proj.parameters()) == 20_979_712  # LLaVA 7B figure
    assert isinstance(proj[1], nn.GELU) and proj[1].approximate == "none"


def test_mlp_depth_parsed_from_the_name():
    assert parse_kind("mlp12x_gelu") == 12
    assert len(build_projector("mlp5x_gelu", 4, 6)) == 9


@pytest.mark.parametrize("kind", ["mlp0x_gelu", "mlp2x_relu", "MLP2x_gelu", "conv", "", "mlpx_gelu"])
def test_unknown_kind_lists_known_kinds(kind):
    with pytest.raises(ValueError, match=r"unknown projector kind .*known kinds: linear, mlp<N>x_gelu"):
        build_projector(kind, 8, 8)


def test_identity_needs_equal_widths():
    with pytest.raises(ValueError, match="in_dim=8, out_dim=16"):
        build_projector("identity", 8, 16)
    x = torch.randn(3, 8)
    assert torch.equal(build_projector("identity", 8, 8)(x), x)


def test_matches_transformers_projector():
    config = LlavaConfig(vision_config=CLIPVisionConfig(hidden_size=12), text_config=LlamaConfig(hidden_size=20, num_attention_heads=2, num_key_value_heads=2))
    theirs = _randomize(LlavaMultiModalProjector(config))
    ours = load_projector(build_projector("mlp2x_gelu", 12, 20),
                          {f"model.multi_modal_projector.{k}": v for k, v in theirs.state_dict().items()})
    x = torch.randn(2, 7, 12)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)
