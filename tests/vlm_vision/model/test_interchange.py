"""Conversion to and from transformers' LLaVA classes and LLaVA's own checkpoint layout."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (CLIPVisionModel, LlamaForCausalLM, LlavaForConditionalGeneration,
                          LlavaNextVideoForConditionalGeneration)

from projector import build_projector
from tests.vlm_vision.fusion_fixtures import (IMAGE_ID, VIDEO_ID, hf_image_model, hf_video_model, pixels, prompt,
                                              scramble, text_config, to_llava_layout, vision_config)
from vlm_vision import CLIPVisionTower, VisionLanguageModel
from vlm_vision.model.checkpoint_keys import hf_to_tower
from vlm_vision.model.fusion_steps import encode_videos
from vlm_vision.model.interchange import split_transformers_keys, tower_to_hf

ATOL = 1e-4


@pytest.fixture(scope="module")
def hf_video():
    return hf_video_model(seed=1)


@pytest.fixture(scope="module")
def hf_image():
    return hf_image_model(seed=2)


def _video_inputs(frames: int = 3):
    ids = torch.tensor([prompt(5, ("video", frames), 7, 8), prompt(9, 10, ("video", frames), 11)])
    return ids, pixels(2, frames)


def _image_inputs():
    return torch.tensor([prompt(5, ("image",), 7, 8), prompt(9, ("image",), 10, 11)]), pixels(2)


def _close(a: torch.Tensor, b: torch.Tensor):
    assert (a - b).abs().max().item() <= ATOL, (a - b).abs().max().item()


@torch.no_grad()
def _video_logits(model, ids, videos):
    if isinstance(model, VisionLanguageModel):
        return model(ids, pixel_values_videos=videos).logits
    return model(input_ids=ids, pixel_values_videos=videos).logits


# ----- transformers -> ours ----------------------------------------------------------------------


def test_video_logits_agree_after_conversion(hf_video):
    ours = VisionLanguageModel.from_llava_next_video(hf_video)
    assert (ours.video_token_id, ours.image_token_id, ours.pool_stride, ours.pool_mode) == (VIDEO_ID, IMAGE_ID, 2, "average")
    assert (ours.tower.select_layer, ours.tower.select_feature) == (-2, "patch")
    ids, videos = _video_inputs()
    _close(_video_logits(ours, ids, videos), _video_logits(hf_video, ids, videos))


def test_conversion_shares_llm_weights(hf_video):
    ours = VisionLanguageModel.from_llava_next_video(hf_video)
    assert ours.llm.lm_head.weight.data_ptr() == hf_video.lm_head.weight.data_ptr()
    theirs = hf_video.model.language_model.layers[0].self_attn.q_proj.weight
    assert ours.llm.model.layers[0].self_attn.q_proj.weight.data_ptr() == theirs.data_ptr()
    torch.testing.assert_close(ours.image_newline.data, hf_video.model.image_newline.data, rtol=0, atol=0)


@torch.no_grad()
def test_pooled_and_projected_video_features_match_get_video_features(hf_video):
    from video.pooling import spatial_pool

    ours = VisionLanguageModel.from_llava_next_video(hf_video)
    _, videos = _video_inputs(frames=2)
    hf_out = hf_video.model.get_video_features(videos, vision_feature_layer=-2, vision_feature_select_strategy="default")
    per_video = ours.video_features(videos)
    assert [v.shape for v in per_video] == [(8, 64), (8, 64)]
    _close(torch.stack(per_video), hf_out.pooler_output)
    # before the projector: the pooled tower tokens that `vlm-vision extract` stores
    hidden = hf_video.model.vision_tower(videos.flatten(0, 1), output_hidden_states=True).hidden_states[-2][:, 1:]
    pooled = torch.cat(encode_videos(ours.tower, videos, stride=2, mode="average"))  # (V*T, 4, 32)
    _close(pooled, hf_video.model.vision_resampler(hidden))
    _close(pooled, spatial_pool(hidden, grid=(4, 4), stride=2, mode="average"))


def test_image_logits_and_tokens_agree_with_llava(hf_image):
    ours = VisionLanguageModel.from_llava(hf_image)
    assert ours.video_token_id is None and ours.image_token_id == IMAGE_ID and ours.image_tokens == 16
    ids, images = _image_inputs()
    with torch.no_grad():
        _close(ours(ids, pixel_values=images).logits, hf_image(input_ids=ids, pixel_values=images).logits)
    theirs = hf_image.generate(input_ids=ids, pixel_values=images, max_new_tokens=6, do_sample=False)
    assert torch.equal(ours.generate(ids, pixel_values=images, max_new_tokens=6, do_sample=False), theirs)


def test_greedy_video_generation_agrees(hf_video):
    ours = VisionLanguageModel.from_llava_next_video(hf_video)
    ids, videos = _video_inputs()
    theirs = hf_video.generate(input_ids=ids, pixel_values_videos=videos, max_new_tokens=8, do_sample=False)
    mine = ours.generate(ids, pixel_values_videos=videos, max_new_tokens=8, do_sample=False)
    assert mine.shape == (2, ids.shape[1] + 8) and torch.equal(mine[:, :ids.shape[1]], ids)
    assert torch.equal(mine, theirs)


def test_settings_read_from_config():
    hf = hf_video_model(seed=3, vision_feature_layer=-1, vision_feature_select_strategy="full",
                        spatial_pool_stride=4, spatial_pool_mode="max")
    ours = VisionLanguageModel.from_llava_next_video(hf)
    assert (ours.tower.select_layer, ours.tower.select_feature, ours.pool_stride, ours.pool_mode) == (-1, "cls_patch", 4, "max")
    assert len(ours.tower.blocks) == 2 and ours.image_tokens == 17


@pytest.mark.parametrize("overrides, message", [
    (dict(spatial_pool_mode="conv"), "spatial_pool_mode='conv'"),
    (dict(vision_feature_layer=[-2, -1]), "several layers"),
    (dict(projector_hidden_act="silu"), "projector_hidden_act='silu'"),
])
def test_unsupported_settings_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        VisionLanguageModel.from_llava_next_video(hf_video_model(**overrides))


# ----- saved folders --------------------------------------------------------------------------------


def test_saved_5x_folder_loads(tmp_path, hf_video):
    hf_video.save_pretrained(tmp_path)
    ours = VisionLanguageModel.from_llava_next_video(tmp_path)
    ids, videos = _video_inputs()
    _close(_video_logits(ours, ids, videos), _video_logits(hf_video, ids, videos))


def test_4x_layout_folder_loads(tmp_path, hf_video):
    """4.x wrote `vision_tower.vision_model.*`; 5.x drops `vision_model.`."""
    hf_video.save_pretrained(tmp_path / "v5")
    tensors = load_file(tmp_path / "v5" / "model.safetensors")
    assert any(k.startswith("vision_tower.embeddings.") for k in tensors)
    (tmp_path / "v4").mkdir()
    (tmp_path / "v4" / "config.json").write_text((tmp_path / "v5" / "config.json").read_text())
    renamed = {k.replace("vision_tower.", "vision_tower.vision_model.", 1): v for k, v in tensors.items()}
    save_file(renamed, tmp_path / "v4" / "model.safetensors", metadata={"format": "pt"})
    ours = VisionLanguageModel.from_llava_next_video(tmp_path / "v4")
    ids, videos = _video_inputs()
    _close(_video_logits(ours, ids, videos), _video_logits(hf_video, ids, videos))


@pytest.mark.parametrize("layout", ["memory-5x", "disk-5x", "disk-4x", "memory-4x"])
def test_key_map_accepts_every_layout(hf_video, layout):
    memory = hf_video.state_dict()
    if layout == "memory-5x":
        tensors = memory
    else:
        tensors = {}
        for k, v in memory.items():
            k = k.replace("model.language_model.", "language_model.model.").replace("lm_head.", "language_model.lm_head.")
            k = k.removeprefix("model.")
            if layout in ("disk-4x", "memory-4x"):
                k = k.replace("vision_tower.", "vision_tower.vision_model.")
            tensors[k] = v
    parts = split_transformers_keys(tensors)
    assert sorted(parts["llm"]) == sorted(LlamaForCausalLM(text_config()).state_dict())
    assert set(parts["projector"]) == {f"multi_modal_projector.linear_{i}.{p}" for i in (1, 2) for p in ("weight", "bias")}
    assert list(parts["newline"]) == ["image_newline"] and not parts["pooler"]
    assert len(hf_to_tower(parts["tower"])) == len(CLIPVisionTower(vision_config(), select_layer=-1).state_dict())


def test_key_map_names_a_stray_key(hf_video):
    with pytest.raises(ValueError, match="'model.extra_head.weight' belongs to no part"):
        split_transformers_keys(hf_video.state_dict() | {"model.extra_head.weight": torch.zeros(1)})


# ----- ours -> transformers ---------------------------------------------------------------------------


def test_save_llava_next_video_loads_in_transformers(tmp_path, hf_video):
    ours = VisionLanguageModel.from_llava_next_video(hf_video)
    ours.save_llava_next_video(tmp_path)
    back, info = LlavaNextVideoForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info
    assert back.config.vision_config.num_hidden_layers == 1 and back.config.vision_feature_layer == -1
    ids, videos = _video_inputs()
    _close(_video_logits(back.eval(), ids, videos), _video_logits(hf_video, ids, videos))
    theirs = back.generate(input_ids=ids, pixel_values_videos=videos, max_new_tokens=5, do_sample=False)
    assert torch.equal(theirs, ours.generate(ids, pixel_values_videos=videos, max_new_tokens=5, do_sample=False))


def test_our_own_model_saves_and_reloads(tmp_path):
    """A model assembled from parts (not converted) round-trips through the transformers folder."""
    tower = scramble(CLIPVisionTower(vision_config()), seed=4)
    llm = scramble(LlamaForCausalLM(text_config()), seed=5).eval()
    model = VisionLanguageModel(tower, scramble(build_projector("mlp2x_gelu", 32, 64), 6), llm,
                                image_token_id=IMAGE_ID, video_token_id=VIDEO_ID)
    model.save_llava_next_video(tmp_path)
    back = VisionLanguageModel.from_llava_next_video(tmp_path)
    ids, videos = _video_inputs(frames=2)
    _close(_video_logits(back, ids, videos), _video_logits(model, ids, videos))
    torch.testing.assert_close(back.image_newline, model.image_newline, rtol=0, atol=0)


def test_save_llava_loads_in_transformers(tmp_path, hf_image):
    ours = VisionLanguageModel.from_llava(hf_image)
    ours.save_llava(tmp_path)
    back, info = LlavaForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.values()), info
    ids, images = _image_inputs()
    with torch.no_grad():
        _close(back(input_ids=ids, pixel_values=images).logits, hf_image(input_ids=ids, pixel_values=images).logits)


def test_tied_embeddings_round_trip(tmp_path):
    hf = hf_image_model(seed=7, tie_word_embeddings=True)
    ours = VisionLanguageModel.from_llava(hf)
    assert ours.llm.lm_head.weight is ours.llm.model.embed_tokens.weight
    ours.save_llava(tmp_path)
    assert not any("lm_head" in k for k in load_file(tmp_path / "model.safetensors"))
    back = VisionLanguageModel.from_llava(tmp_path)
    ids, images = _image_inputs()
    with torch.no_grad():
        _close(back(ids, pixel_values=images).logits, hf(input_ids=ids, pixel_values=images).logits)


def test_unsaveable_models_are_refused(tmp_path):
    tower = CLIPVisionTower(vision_config())
    llm = LlamaForCausalLM(text_config())
    grid = VisionLanguageModel(tower, build_projector("mlp2x_gelu", 32, 64), llm, image_token_id=IMAGE_ID,
                               video_token_id=VIDEO_ID, video_newline="grid")
    with pytest.raises(ValueError, match="no newline tokens to videos"):
        grid.save_llava_next_video(tmp_path)
    linear = VisionLanguageModel(tower, build_projector("linear", 32, 64), llm, image_token_id=IMAGE_ID,
                                 video_token_id=VIDEO_ID)
    with pytest.raises(ValueError, match="mlp2x_gelu projector, this model has linear"):
        linear.save_llava(tmp_path)
    images_only = VisionLanguageModel(tower, build_projector("mlp2x_gelu", 32, 64), llm, image_token_id=IMAGE_ID,
                                      video_token_id=None)
    with pytest.raises(ValueError, match="needs a video token id"):
        images_only.save_llava_next_video(tmp_path)


def test_tower_to_hf_inverts_hf_to_tower():
    hf = scramble(CLIPVisionModel(vision_config()), seed=8)
    tower = CLIPVisionTower.from_transformers(hf, select_layer=-1)
    theirs = {k.removeprefix("vision_model."): v for k, v in hf.state_dict().items()
              if "post_layernorm" not in k and "position_ids" not in k}
    mine = tower_to_hf(tower)
    assert mine.keys() == theirs.keys()
    for k in mine:
        assert torch.equal(mine[k], theirs[k]), k


# ----- original LLaVA checkpoints ----------------------------------------------------------------------




def _llava_config(hf, **extra) -> dict:
    text = {k: v for k, v in hf.config.text_config.to_dict().items() if k != "model_type"}
    return {**text, "model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"],
            "mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_vision_select_layer": -2,
            "mm_vision_select_feature": "patch", "mm_projector_type": "mlp2x_gelu", "mm_hidden_size": 32,
            "mm_resampler_type": "spatial_pool", "mm_spatial_pool_stride": 2, "mm_spatial_pool_mode": "average",
            **extra}


def test_original_llava_next_video_checkpoint(tmp_path, hf_video):
    tensors = to_llava_layout(hf_video)
    assert "model.mm_projector.2.bias" in tensors and "model.layers.0.self_attn.q_proj.weight" in tensors
    # two safetensors shards and an index, as large checkpoints ship
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, shard in shards.items():
        save_file({k: tensors[k] for k in shard}, tmp_path / name, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: name for name, shard in shards.items() for k in shard}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text(json.dumps(_llava_config(hf_video)))
    ours = VisionLanguageModel.from_llava_checkpoint(tmp_path, vision_config=vision_config(),
                                                     image_token_id=IMAGE_ID, video_token_id=VIDEO_ID)
    ids, videos = _video_inputs()
    _close(_video_logits(ours, ids, videos), _video_logits(hf_video, ids, videos))


def test_original_llava_checkpoint_without_tower(tmp_path, hf_image):
    """LLaVA-1.5 folders hold no tower: it comes from its own path; projector from mm_projector.bin."""
    tensors = to_llava_layout(hf_image)
    llm_only = {k: v for k, v in tensors.items() if "vision_tower" not in k and "mm_projector" not in k}
    torch.save(llm_only, tmp_path / "pytorch_model.bin")
    torch.save({k: v for k, v in tensors.items() if "mm_projector" in k}, tmp_path / "mm_projector.bin")
    (tmp_path / "config.json").write_text(json.dumps(_llava_config(hf_image, model_type="llava")))
    tower = CLIPVisionTower.from_transformers(hf_image.model.vision_tower, select_layer=-2)
    ours = VisionLanguageModel.from_llava_checkpoint(tmp_path, tower=tower, image_token_id=IMAGE_ID,
                                                     video_token_id=None)
    ids, images = _image_inputs()
    with torch.no_grad():
        _close(ours(ids, pixel_values=images).logits, hf_image(input_ids=ids, pixel_values=images).logits)
    with pytest.raises(ValueError, match="holds no vision tower weights; pass tower="):
        VisionLanguageModel.from_llava_checkpoint(tmp_path, image_token_id=IMAGE_ID, video_token_id=None)


def test_original_checkpoint_settings(tmp_path, hf_video):
    save_file(to_llava_layout(hf_video), tmp_path / "model.safetensors", metadata={"format": "pt"})
    config = _llava_config(hf_video, mm_spatial_pool_stride=4, mm_patch_merge_type="spatial_unpad",
                           mm_newline_position="frame")
    (tmp_path / "config.json").write_text(json.dumps(config))
    ours = VisionLanguageModel.from_llava_checkpoint(tmp_path, vision_config=vision_config(),
                                                     image_token_id=IMAGE_ID, video_token_id=VIDEO_ID)
    assert (ours.pool_stride, ours.video_newline) == (4, "frame")
    assert VisionLanguageModel.from_llava_checkpoint(tmp_path, vision_config=vision_config(), image_token_id=IMAGE_ID,
                                                     video_token_id=VIDEO_ID, pool_stride=2).pool_stride == 2
    (tmp_path / "config.json").write_text(json.dumps(config | {"mm_pooling_position": "after"}))
    with pytest.raises(ValueError, match="mm_pooling_position='after'"):
        VisionLanguageModel.from_llava_checkpoint(tmp_path, vision_config=vision_config(), image_token_id=IMAGE_ID,
                                                  video_token_id=VIDEO_ID)
    (tmp_path / "config.json").write_text(json.dumps(config | {"mm_hidden_size": 1024}))
    with pytest.raises(ValueError, match="mm_hidden_size=1024 but the tower's width is 32"):
        VisionLanguageModel.from_llava_checkpoint(tmp_path, vision_config=vision_config(), image_token_id=IMAGE_ID,
                                                  video_token_id=VIDEO_ID)
