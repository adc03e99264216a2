"""The tower variants (`vlm_vision.model.configs`): each builder's numbers against the README's
table, unknown names refused with the known ones, and OpenAI's Hub ids mapped to their variants."""

from __future__ import annotations

import pytest

from vlm_vision.model.configs import CLIP_MEAN, CLIP_STD, HUB_IDS, VARIANTS, hub_config, vision_config

# name -> (image size, patch, grid side, tokens, width, blocks)
README_TABLE = {
    "ViT-B/32": (224, 32, 7, 49, 768, 12),
    "ViT-B/16": (224, 16, 14, 196, 768, 12),
    "ViT-L/14": (224, 14, 16, 256, 1024, 24),
    "ViT-L/14@336": (336, 14, 24, 576, 1024, 24),
}


@pytest.mark.parametrize("name", sorted(README_TABLE))
def test_vision_config_numbers(name):
    size, patch, grid, tokens, width, blocks = README_TABLE[name]
    config = vision_config(name)
    assert (config.image_size, config.patch_size, config.hidden_size, config.num_hidden_layers) == (
        size, patch, width, blocks)
    assert (config.image_size // config.patch_size) ** 2 == grid * grid == tokens
    assert config.hidden_size // config.num_attention_heads == 64
    assert config.intermediate_size == 4 * width and config.hidden_act == "quick_gelu"


def test_variant_table_is_complete():
    assert set(VARIANTS) == set(README_TABLE)
    with pytest.raises(ValueError, match="ViT-H/14.*ViT-B/16"):
        vision_config("ViT-H/14")


def test_openai_hub_ids_give_their_variants_and_other_ids_none():
    assert set(HUB_IDS) == set(VARIANTS)
    for name, hub_id in HUB_IDS.items():
        assert hub_config(hub_id).to_dict() == vision_config(name).to_dict()
    assert hub_config("openai/clip-vit-large-patch14-336").image_size == 336
    assert hub_config("laion/CLIP-ViT-H-14-laion2B-s32B-b79K") is None


def test_clip_normalises_with_its_own_statistics_not_imagenets():
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert CLIP_STD == (0.26862954, 0.26130258, 0.27577711)
