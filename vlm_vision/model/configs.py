"""Tower variants and the constants that travel with them.

One builder per variant, the numbers written in. CLIP normalises with its *own* mean and std
(computed on its training set), not ImageNet's (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) that
many write-ups quote: using ImageNet's shifts every input by up to ~0.2 standard deviations.
"""

from __future__ import annotations

from transformers import CLIPVisionConfig

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


def _vit(*, image_size: int, patch_size: int, width: int, layers: int, heads: int, projection_dim: int) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=projection_dim,
        hidden_act="quick_gelu",  # x * sigmoid(1.702 x), as OpenAI trained CLIP
        layer_norm_eps=1e-5,
    )


def vit_b_32() -> CLIPVisionConfig:
    """ViT-B/32: 224 px, 7x7 = 49 patches, width 768."""
    return _vit(image_size=224, patch_size=32, width=768, layers=12, heads=12, projection_dim=512)


def vit_b_16() -> CLIPVisionConfig:
    """ViT-B/16: 224 px, 14x14 = 196 patches, width 768."""
    return _vit(image_size=224, patch_size=16, width=768, layers=12, heads=12, projection_dim=512)


def vit_l_14() -> CLIPVisionConfig:
    """ViT-L/14: 224 px, 16x16 = 256 patches, width 1024."""
    return _vit(image_size=224, patch_size=14, width=1024, layers=24, heads=16, projection_dim=768)


def vit_l_14_336() -> CLIPVisionConfig:
    """ViT-L/14@336: 336 px, 24x24 = 576 patches, width 1024 (LLaVA's tower)."""
    return _vit(image_size=336, patch_size=14, width=1024, layers=24, heads=16, projection_dim=768)


VARIANTS = {
    "ViT-B/32": vit_b_32,
    "ViT-B/16": vit_b_16,
    "ViT-L/14": vit_l_14,
    "ViT-L/14@336": vit_l_14_336,
}

# Hub ids of the OpenAI releases, for users who have them cached.
HUB_IDS = {
    "ViT-B/32": "openai/clip-vit-base-patch32",
    "ViT-B/16": "openai/clip-vit-base-patch16",
    "ViT-L/14": "openai/clip-vit-large-patch14",
    "ViT-L/14@336": "openai/clip-vit-large-patch14-336",
}


def vision_config(name: str) -> CLIPVisionConfig:
    """The exact `CLIPVisionConfig` of a named CLIP variant.

    Args:
        name: one of "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336".

    Raises:
        ValueError: for an unknown name, listing the known ones.

    Example:
        >>> vision_config("ViT-L/14@336").image_size
        336
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown CLIP variant {name!r}; known variants: {sorted(VARIANTS)}")
    return VARIANTS[name]()


def hub_config(hub_id: str) -> CLIPVisionConfig | None:
    """The `CLIPVisionConfig` of an OpenAI release named by its Hub id (`HUB_IDS`), or None.

    Example:
        >>> hub_config("openai/clip-vit-large-patch14-336").image_size
        336
    """
    variant = next((name for name, hub in HUB_IDS.items() if hub == hub_id), None)
    return None if variant is None else vision_config(variant)
