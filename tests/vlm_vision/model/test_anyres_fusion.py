"""Anyres images in the fused model, the processor and the conversions, against transformers' LLaVA-NeXT.

Tiny parts from `fusion_fixtures`: a 28 px CLIP tower with 7 px patches (4 x 4 = 16 tokens per crop)
and a 2-layer Llama; pinpoints scaled down from LLaVA-NeXT's to 28 px tiles.
"""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import (LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextVideoForConditionalGeneration)
from transformers.models.llava_next import LlavaNextProcessor
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

from tests.vlm_vision.fusion_fixtures import (FRAME_TOKENS, IMAGE_ID, VIDEO_ID, hf_video_model, make_tokenizer, pad,
                                              pixels, scramble, text_config, to_llava_layout, vision_config)
from vlm_vision import VisionLanguageModel, anyres_num_tokens
from vlm_vision.model.anyres import anyres_batch
from vlm_vision.model.processor import VisionLanguageProcessor
from vlm_vision.model.transforms import CLIPImageTransform

PINPOINTS = [[28, 56], [56, 28], [56, 56]]
ATOL = 1e-4
# tiles (rows x cols) -> tokens: 1x2 -> 16 + 4*9 = 52; 1x2 (a tie) -> 44; 2x2 -> 56; 1x2, no grid row kept -> 16
SIZES = [(40, 90), (20, 30), (100, 57), (5, 300)]


def hf_next_model(seed: int = 0, image_token_index: int = IMAGE_ID) -> LlavaNextForConditionalGeneration:
    config = LlavaNextConfig(text_config=text_config(), vision_config=vision_config(),
                             image_token_index=image_token_index, image_grid_pinpoints=PINPOINTS)
    torch.manual_seed(seed)
    return scramble(LlavaNextForConditionalGeneration(config), seed).eval()


@pytest.fixture(scope="module")
def hf_next():
    return hf_next_model(seed=4)


@pytest.fixture(scope="module")
def hf_next_video():
    return hf_video_model(seed=5, image_grid_pinpoints=PINPOINTS)


def _images(sizes=SIZES, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def _count(h, w):
    return anyres_num_tokens(h, w, grid_pinpoints=PINPOINTS, tile_size=28, patch_size=7)


def _padded(crops):
    most = max(c.shape[0] for c in crops)
    return torch.stack([torch.cat([c, c.new_zeros(most - c.shape[0], *c.shape[1:])]) for c in crops])


def _image_batch(sizes=SIZES):
    """Two samples: the first holds images 0 and 1, the second images 2 and 3 (when given)."""
    crops, image_sizes = anyres_batch(_images(sizes), CLIPImageTransform(28), grid_pinpoints=PINPOINTS, tile_size=28)
    n = [_count(h, w) for h, w in image_sizes.tolist()]
    samples = [[1, 5] + [IMAGE_ID] * n[0] + [7] + [IMAGE_ID] * n[1] + [8]]
    if len(n) > 2:
        samples.append([1, 9] + [IMAGE_ID] * n[2] + [10, 11] + [IMAGE_ID] * n[3])
    ids, mask = pad(samples, "left")
    return ids, mask, crops, image_sizes


def _close(a, b):
    assert (a - b).abs().max().item() <= ATOL, (a - b).abs().max().item()


# ----- the fused model against LlavaNextForConditionalGeneration ------------------------------------

def test_image_logits_agree_with_llava_next(hf_next):
    ours = VisionLanguageModel.from_llava_next(hf_next)
    assert ours.image_grid_pinpoints == ((28, 56), (56, 28), (56, 56)) and ours.anyres_convention == "transformers"
    torch.testing.assert_close(ours.image_newline.data, hf_next.model.image_newline.data, rtol=0, atol=0)
    ids, mask, crops, sizes = _image_batch()
    with torch.no_grad():
        theirs = hf_next(input_ids=ids, attention_mask=mask, pixel_values=_padded(crops), image_sizes=sizes).logits
        _close(ours(ids, attention_mask=mask, pixel_values=crops, image_sizes=sizes).logits, theirs)
        _close(ours(ids, attention_mask=mask, pixel_values=_padded(crops), image_sizes=sizes).logits, theirs)


def test_image_token_counts_are_transformers(hf_next):
    ours = VisionLanguageModel.from_llava_next(hf_next)
    _, _, crops, sizes = _image_batch()
    with torch.no_grad():
        features = hf_next.model.get_image_features(pixel_values=_padded(crops), image_sizes=sizes).pooler_output
    assert [f.shape[0] for f in features] == [_count(h, w) for h, w in sizes.tolist()]
    assert [ours.num_image_tokens(h, w) for h, w in sizes.tolist()] == [f.shape[0] for f in features]


def test_greedy_generation_agrees(hf_next):
    ours = VisionLanguageModel.from_llava_next(hf_next)
    ids, mask, crops, sizes = _image_batch()
    theirs = hf_next.generate(input_ids=ids, attention_mask=mask, pixel_values=_padded(crops), image_sizes=sizes,
                              max_new_tokens=5, do_sample=False)
    mine = ours.generate(ids, attention_mask=mask, pixel_values=crops, image_sizes=sizes, max_new_tokens=5,
                         do_sample=False)
    assert torch.equal(mine, theirs)


def test_count_mismatch_and_missing_sizes_are_named(hf_next):
    ours = VisionLanguageModel.from_llava_next(hf_next)
    ids, mask, crops, sizes = _image_batch()
    with pytest.raises(ValueError, match="image_sizes"):
        ours(ids, pixel_values=crops)
    wrong = sizes.clone()
    wrong[1] = torch.tensor([30, 20])  # as many crops (2 x 1 tiles instead of 1 x 2) but 46 tokens, not 44
    with pytest.raises(ValueError, match="placeholder tokens"):
        ours(ids, pixel_values=crops, image_sizes=wrong)


def test_save_llava_next_loads_in_transformers(tmp_path, hf_next):
    ours = VisionLanguageModel.from_llava_next(hf_next)
    ours.save_llava_next(tmp_path)
    back = LlavaNextForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert back.config.image_grid_pinpoints == PINPOINTS
    ids, mask, crops, sizes = _image_batch()
    with torch.no_grad():
        _close(back(input_ids=ids, attention_mask=mask, pixel_values=_padded(crops), image_sizes=sizes).logits,
               hf_next(input_ids=ids, attention_mask=mask, pixel_values=_padded(crops), image_sizes=sizes).logits)
    again = VisionLanguageModel.from_llava_next(tmp_path)
    assert again.image_grid_pinpoints == ours.image_grid_pinpoints


def test_llava_convention_cannot_be_saved_for_transformers(tmp_path, hf_next):
    ours = VisionLanguageModel.from_llava_next(hf_next)
    ours.anyres_convention = "llava"
    with pytest.raises(ValueError, match="convention"):
        ours.save_llava_next(tmp_path)


# ----- LlavaNextVideoForConditionalGeneration: an anyres image and a video in one prompt --------------

def test_image_and_video_prompt_agrees_with_llava_next_video(hf_next_video):
    ours = VisionLanguageModel.from_llava_next_video(hf_next_video)
    assert ours.image_grid_pinpoints == ((28, 56), (56, 28), (56, 56))
    crops, sizes = anyres_batch(_images([(40, 90), (100, 57)]), CLIPImageTransform(28), grid_pinpoints=PINPOINTS,
                                tile_size=28)
    n = [_count(h, w) for h, w in sizes.tolist()]
    frames = 3
    samples = [[1, 5] + [IMAGE_ID] * n[0] + [7] + [VIDEO_ID] * (frames * FRAME_TOKENS) + [8],
               [1, 9] + [VIDEO_ID] * (frames * FRAME_TOKENS) + [IMAGE_ID] * n[1] + [10]]
    ids, mask = pad(samples, "left")
    videos = pixels(2, frames, seed=3)
    with torch.no_grad():
        theirs = hf_next_video(input_ids=ids, attention_mask=mask, pixel_values=_padded(crops), image_sizes=sizes,
                               pixel_values_videos=videos).logits
        mine = ours(ids, attention_mask=mask, pixel_values=crops, image_sizes=sizes, pixel_values_videos=videos).logits
    _close(mine, theirs)


def test_save_llava_next_video_keeps_anyres_images(tmp_path, hf_next_video):
    VisionLanguageModel.from_llava_next_video(hf_next_video).save_llava_next_video(tmp_path)
    back = LlavaNextVideoForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert back.config.image_grid_pinpoints == PINPOINTS
    ids, mask, crops, sizes = _image_batch()
    with torch.no_grad():
        _close(back(input_ids=ids, attention_mask=mask, pixel_values=_padded(crops), image_sizes=sizes).logits,
               hf_next_video(input_ids=ids, attention_mask=mask, pixel_values=_padded(crops), image_sizes=sizes).logits)


# ----- the processor ----------------------------------------------------------------------------------

def _hf_processor(tokenizer):
    """transformers' processor for the tiny model (llava-hf settings: CLS counted, "default" strategy)."""
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                                 image_grid_pinpoints=PINPOINTS)
    return LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=7,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1)


@pytest.fixture(scope="module")
def with_tokenizer():
    """A tokenizer and a LLaVA-NeXT model whose image token is the `<image>` the processor adds."""
    tokenizer = make_tokenizer(padding_side="left")
    image_id = len(tokenizer)  # the processor adds <image> first, then <video>
    hf = hf_next_model(seed=6, image_token_index=image_id)
    processor = VisionLanguageProcessor.for_model(tokenizer, VisionLanguageModel.from_llava_next(hf))
    assert processor.image_token_id == image_id
    return tokenizer, hf, processor


def test_processor_expands_like_llava_next_processor(with_tokenizer):
    tokenizer, _, processor = with_tokenizer
    texts = ["<image> what is this ? <image>", "describe the <image> image"]
    images = _images([(40, 90), (20, 30), (100, 57)])
    ours = processor(texts, images=images)
    theirs = _hf_processor(tokenizer)(text=texts, images=images, padding=True, return_tensors="pt")
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["attention_mask"], theirs["attention_mask"])
    assert torch.equal(ours["image_sizes"], theirs["image_sizes"])
    assert ours["pixel_values"].shape == theirs["pixel_values"].shape == (3, 5, 3, 28, 28)  # zero crops padded
    assert (ours["pixel_values"] - theirs["pixel_values"]).abs().max() < 0.05  # torch vs PIL bicubic: <= 2 levels
    counts = (ours["input_ids"] == processor.image_token_id).sum(1).tolist()
    assert counts == [_count(40, 90) + _count(20, 30), _count(100, 57)] == [96, 56]


def test_processor_output_gives_the_same_logits_in_both_models(with_tokenizer):
    _, hf, processor = with_tokenizer
    model = VisionLanguageModel.from_llava_next(hf)
    inputs = processor(["<image> what is this ?", "describe the <image>"], images=_images([(40, 90), (100, 57)]))
    with torch.no_grad():
        _close(model(**inputs).logits, hf(**inputs).logits)


# ----- original LLaVA-NeXT checkpoints ----------------------------------------------------------------

def test_original_llava_next_checkpoint_reads_anyres_settings(tmp_path, hf_next):
    tensors = to_llava_layout(hf_next)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    text = {k: v for k, v in hf_next.config.text_config.to_dict().items() if k != "model_type"}
    # LLaVA lists pinpoints as [width, height]: the same list in LLaVA's order holds the same shapes
    config = {**text, "model_type": "llava_llama", "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
              "mm_projector_type": "mlp2x_gelu", "mm_hidden_size": 32, "image_aspect_ratio": "anyres",
              "mm_patch_merge_type": "spatial_unpad", "image_grid_pinpoints": PINPOINTS}
    (tmp_path / "config.json").write_text(json.dumps(config))
    ours = VisionLanguageModel.from_llava_checkpoint(tmp_path, vision_config=vision_config(), image_token_id=IMAGE_ID,
                                                     video_token_id=None)
    assert ours.image_grid_pinpoints == ((28, 56), (56, 28), (56, 56)) and ours.anyres_convention == "llava"
    torch.testing.assert_close(ours.image_newline.data, hf_next.model.image_newline.data, rtol=0, atol=0)
    # away from ties and rounding traps the two conventions agree, so transformers is the oracle
    ids, mask, crops, sizes = _image_batch([(40, 90), (100, 57)])
    with torch.no_grad():
        _close(ours(ids, attention_mask=mask, pixel_values=crops, image_sizes=sizes).logits,
               hf_next(input_ids=ids, attention_mask=mask, pixel_values=_padded(crops), image_sizes=sizes).logits)
    (tmp_path / "config.json").write_text(json.dumps(config | {"image_grid_pinpoints": "(1x1),...,(2x2)"}))
    with pytest.raises(ValueError, match="image_grid_pinpoints"):
        VisionLanguageModel.from_llava_checkpoint(tmp_path, vision_config=vision_config(), image_token_id=IMAGE_ID,
                                                  video_token_id=None)
