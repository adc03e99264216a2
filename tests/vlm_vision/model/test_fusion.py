"""VisionLanguageModel: splicing, counts, labels, padding, newline layouts, construction."""

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPVisionModel, GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

from projector import build_projector, save_projector
from tests.vlm_vision.fusion_fixtures import (FRAME_TOKENS, IMAGE_ID, IMAGE_TOKENS, PAD_ID, VIDEO_ID, pad, pixels,
                                              prompt, scramble, text_config, vision_config)
from video.pooling import num_video_tokens, spatial_pool
from vlm_vision import CLIPVisionTower, VisionLanguageModel
from vlm_vision.model.video_tokens import add_video_newlines
from vlm_vision.model.fusion_steps import encode_videos

ATOL = 1e-4


def make_model(video_newline: str = "no_token", seed: int = 0, llm: str = "llama") -> VisionLanguageModel:
    tower = scramble(CLIPVisionTower(vision_config()), seed)
    if llm == "llama":
        llm = scramble(LlamaForCausalLM(text_config()), seed + 1).eval()
    else:  # absolute position embeddings: logits change if padding shifts the positions
        config = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=200, n_positions=128)
        llm = scramble(GPT2LMHeadModel(config), seed + 1).eval()
    projector = scramble(build_projector("mlp2x_gelu", 32, 64), seed + 2)
    return VisionLanguageModel(tower, projector, llm, image_token_id=IMAGE_ID, video_token_id=VIDEO_ID,
                               video_newline=video_newline).eval()


@pytest.fixture(scope="module")
def model():
    return make_model()


# ----- newline layouts and token counts --------------------------------------------------------------


def test_newline_layouts_by_hand():
    features = torch.arange(1, 9, dtype=torch.float).reshape(2, 4, 1)  # 2 frames of a 2 x 2 grid, width 1
    newline = torch.tensor([0.0])
    order = {layout: add_video_newlines(features, newline, grid=(2, 2), layout=layout).flatten().tolist()
             for layout in ("no_token", "one_token", "frame", "grid")}
    assert order["no_token"] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert order["one_token"] == [1, 2, 3, 4, 5, 6, 7, 8, 0]
    assert order["frame"] == [1, 2, 3, 4, 0, 5, 6, 7, 8, 0]
    assert order["grid"] == [1, 2, 0, 3, 4, 0, 5, 6, 0, 7, 8, 0]
    with pytest.raises(ValueError, match="unknown video_newline layout 'row'"):
        add_video_newlines(features, newline, grid=(2, 2), layout="row")
    with pytest.raises(ValueError, match="pooled grid 3x2 does not hold the 4 tokens"):
        add_video_newlines(features, newline, grid=(3, 2), layout="grid")


@pytest.mark.parametrize("layout", ["no_token", "one_token", "frame", "grid"])
@pytest.mark.parametrize("stride", [1, 2, 4])
@pytest.mark.parametrize("frames", [1, 8, 32])
def test_token_count_matches_video_num_video_tokens(layout, stride, frames):
    side = 24 // stride
    features = torch.zeros(frames, side * side, 2)
    tokens = add_video_newlines(features, torch.zeros(2), grid=(side, side), layout=layout)
    assert tokens.shape[0] == num_video_tokens(frames, grid=(24, 24), stride=stride, newline=layout)


def test_reference_counts():
    assert num_video_tokens(32, grid=(24, 24), stride=2, newline="no_token") == 4608
    assert num_video_tokens(32, grid=(24, 24), stride=2, newline="grid") == 32 * 12 * 13


@pytest.mark.parametrize("layout", ["no_token", "one_token", "frame", "grid"])
def test_model_features_have_the_advertised_length(layout):
    model = make_model(layout)
    for frames in (1, 3):
        (tokens,) = model.video_features(video_features=[torch.randn(frames, FRAME_TOKENS, 32)])
        assert tokens.shape == (model.video_tokens(frames), 64)


@torch.no_grad()
def test_bilinear_pooling_of_an_odd_grid():
    """A 4x4 grid at stride 3 pools bilinearly to 2x2 (ceil), and the grid layout still lines up."""
    model = make_model("grid")
    model.pool_stride, model.pool_mode = 3, "bilinear"
    assert model.pooled_grid == (2, 2)
    (tokens,) = model.video_features(pixels(1, 2))
    assert tokens.shape == (model.video_tokens(2), 64) == (2 * 2 * 3, 64)


# ----- encoding and splicing ---------------------------------------------------------------------------


@torch.no_grad()
def test_frames_are_folded_and_unfolded(model):
    a, b = pixels(3, seed=1), pixels(5, seed=2)
    pooled = encode_videos(model.tower, [a, b], stride=2, mode="average")
    assert [p.shape for p in pooled] == [(3, 4, 32), (5, 4, 32)]
    alone = spatial_pool(model.tower(b), grid=(4, 4), stride=2, mode="average")
    torch.testing.assert_close(pooled[1], alone, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"float\[V, T, 3, S, S\], got shape \[2, 3, 28, 28\]"):
        encode_videos(model.tower, torch.zeros(2, 3, 28, 28), stride=2, mode="average")


@torch.no_grad()
def test_precomputed_video_features_give_the_same_logits(model):
    ids = torch.tensor([prompt(5, ("video", 2), 6)])
    videos = pixels(1, 2)
    features = encode_videos(model.tower, videos, stride=2, mode="average")
    from_pixels = model(ids, pixel_values_videos=videos).logits
    torch.testing.assert_close(model(ids, video_features=features).logits, from_pixels, rtol=0, atol=1e-6)
    torch.testing.assert_close(model(ids, video_features=torch.stack(features)).logits, from_pixels, rtol=0, atol=1e-6)


def test_count_mismatch_states_both_counts_in_tokens(model):
    ids = torch.tensor([prompt(5, ("video", 2), 6)[:-2] + [6]])  # one placeholder cut
    with pytest.raises(ValueError, match=r"holds 7 placeholder tokens \(id 198; per sample \[7\]\) but the 1 videos "
                                         r"\(tokens per video: \[8\]\) give 8 tokens"):
        model(ids, pixel_values_videos=pixels(1, 2))
    ids = torch.tensor([prompt(5, ("image",), 6)])
    with pytest.raises(ValueError, match=r"holds 16 placeholder tokens .* 2 images \(16 tokens per image\) give 32 tokens"):
        model(ids, pixel_values=pixels(2))


def test_placeholders_need_media_and_media_needs_ids(model):
    with pytest.raises(ValueError, match="holds 8 video placeholder tokens .* but no videos were given"):
        model(torch.tensor([prompt(("video", 2))]))
    images_only = VisionLanguageModel(model.tower, model.projector, model.llm, image_token_id=IMAGE_ID,
                                      video_token_id=None)
    with pytest.raises(ValueError, match="videos were given but this model has no video_token_id"):
        images_only(torch.tensor([prompt(5)]), pixel_values_videos=pixels(1, 2))
    with pytest.raises(ValueError, match="exactly one of pixel_values_videos and video_features"):
        model(torch.tensor([prompt(("video", 1))]), pixel_values_videos=pixels(1, 1),
              video_features=torch.zeros(1, 1, 4, 32))


def test_bad_ids_are_named(model):
    with pytest.raises(ValueError, match=r"ids in \[1, 200\] but the LLM embeds 200.*resize_embeddings"):
        model(torch.tensor([[1, 200]]))
    with pytest.raises(ValueError, match=r"input_ids must be long\[B, L\], got \[3\]"):
        model(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"video_features\[0\] must be float\[T, N', D_v\], got \[4, 32\]"):
        model.video_features(video_features=[torch.zeros(4, 32)])


def test_projector_width_is_checked():
    tower, llm = CLIPVisionTower(vision_config()), LlamaForCausalLM(text_config())
    with pytest.raises(ValueError, match="projector maps 32 -> 48, but the tower gives 32 and the LLM embeds in 64"):
        VisionLanguageModel(tower, build_projector("mlp2x_gelu", 32, 48), llm, image_token_id=1, video_token_id=2)
    with pytest.raises(ValueError, match="stride 3 does not divide the tower's 4x4 patch grid"):
        VisionLanguageModel(tower, build_projector("linear", 32, 64), llm, image_token_id=1, video_token_id=2,
                            pool_stride=3)
    with pytest.raises(ValueError, match="unknown pool_mode 'mean'"):
        VisionLanguageModel(tower, build_projector("linear", 32, 64), llm, image_token_id=1, video_token_id=2,
                            pool_mode="mean")
    with pytest.raises(ValueError, match="unknown video_newline 'rows'"):
        VisionLanguageModel(tower, build_projector("linear", 32, 64), llm, image_token_id=1, video_token_id=2,
                            video_newline="rows")


# ----- labels -----------------------------------------------------------------------------------------


def test_loss_ignores_visual_positions(model):
    ids = torch.tensor([prompt(5, ("video", 1), ("image",), 6, 7, 8)])
    videos, images = pixels(1, 1), pixels(1, seed=3)
    out = model(ids, pixel_values=images, pixel_values_videos=videos, labels=ids.clone())
    logits = out.logits[0, :-1]
    targets = ids[0, 1:]
    keep = (targets != VIDEO_ID) & (targets != IMAGE_ID)
    expected = F.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=1e-5)
    assert keep.sum() == 4  # 5 and the three tokens after the visual spans


def test_gradients_reach_the_projector_not_the_frozen_tower():
    model = make_model().train()
    ids = torch.tensor([prompt(5, ("video", 1), 6, 7)])
    model(ids, pixel_values_videos=pixels(1, 1), labels=ids).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projector.parameters())
    assert all(not p.requires_grad for p in model.tower.parameters()) and not model.tower.training


def test_text_only_training_batch_runs_the_vision_side_at_zero_weight():
    """A text-only batch in training mode still runs tower and projector (the stand-in that keeps
    FSDP/ZeRO-3 processes in step): every projector and newline gradient exists and is exactly 0,
    the loss is bit-identical to the eval-mode loss (where nothing vision runs)."""
    model = make_model(video_newline="one_token")
    ids = torch.tensor([prompt(5, 6, 7)])
    expected = model(ids, labels=ids).loss  # eval mode: no stand-in
    model.train()
    calls = []
    hook = model.tower.register_forward_hook(lambda *args: calls.append(1))
    loss = model(ids, labels=ids).loss
    hook.remove()
    loss.backward()
    assert calls and torch.equal(loss, expected)
    grads = [p.grad for p in [*model.projector.parameters(), model.image_newline]]
    assert all(g is not None and not g.any() for g in grads)


# ----- batches ----------------------------------------------------------------------------------------


SAMPLES = [  # (ids, images, videos) per sample: text only, image, video, image and video
    (prompt(5, 6, 7), 0, 0),
    (prompt(5, ("image",), 8), 1, 0),
    (prompt(9, ("video", 2), 10, 11, 12), 0, 1),
    (prompt(("video", 2), 13, ("image",), 14), 1, 1),
]


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("llm", ["llama", "gpt2"])
@torch.no_grad()
def test_mixed_batch_logits_equal_each_sample_alone(llm, side):
    model = make_model(llm=llm)
    images = pixels(2, seed=4)
    videos = pixels(2, 2, seed=5)
    ids, mask = pad([s[0] for s in SAMPLES], side)
    batch = model(ids, attention_mask=mask, pixel_values=images, pixel_values_videos=videos).logits
    i_img = i_vid = 0
    for row, (sample, n_img, n_vid) in enumerate(SAMPLES):
        alone = model(torch.tensor([sample]),
                      pixel_values=images[i_img:i_img + 1] if n_img else None,
                      pixel_values_videos=videos[i_vid:i_vid + 1] if n_vid else None).logits[0]
        i_img, i_vid = i_img + n_img, i_vid + n_vid
        real = batch[row][mask[row].bool()]
        assert (real - alone).abs().max() <= ATOL, (side, row)


@torch.no_grad()
def test_left_padded_batch_generates_what_each_sample_generates_alone(model):
    images = pixels(2, seed=4)
    videos = pixels(2, 2, seed=5)
    ids, mask = pad([s[0] for s in SAMPLES], "left")
    out = model.generate(ids, attention_mask=mask, pixel_values=images, pixel_values_videos=videos,
                         max_new_tokens=5, do_sample=False, pad_token_id=PAD_ID)
    assert out.shape == (4, ids.shape[1] + 5) and torch.equal(out[:, :ids.shape[1]], ids)
    i_img = i_vid = 0
    for row, (sample, n_img, n_vid) in enumerate(SAMPLES):
        alone = model.generate(torch.tensor([sample]), pixel_values=images[i_img:i_img + 1] if n_img else None,
                               pixel_values_videos=videos[i_vid:i_vid + 1] if n_vid else None,
                               max_new_tokens=5, do_sample=False, pad_token_id=PAD_ID)
        i_img, i_vid = i_img + n_img, i_vid + n_vid
        assert out[row, ids.shape[1]:].tolist() == alone[0, len(sample):].tolist(), row


# ----- construction -----------------------------------------------------------------------------------


def test_from_pretrained_folders_and_projector_file(tmp_path):
    scramble(CLIPVisionModel(vision_config()), 1).save_pretrained(tmp_path / "tower")
    scramble(LlamaForCausalLM(text_config()), 2).save_pretrained(tmp_path / "llm")
    trained = scramble(build_projector("mlp2x_gelu", 32, 64), 3)
    save_projector(trained, tmp_path / "mm_projector.bin")
    model = VisionLanguageModel.from_pretrained(tmp_path / "llm", tmp_path / "tower", tmp_path / "mm_projector.bin",
                                                image_token_id=IMAGE_ID, video_token_id=VIDEO_ID)
    assert model.tower.select_layer == -2 and len(model.tower.blocks) == 1
    assert all(torch.equal(a, b) for a, b in zip(model.projector.state_dict().values(), trained.state_dict().values()))
    out = model(torch.tensor([prompt(5, ("video", 2))]), pixel_values_videos=pixels(1, 2))
    assert out.logits.shape == (1, 2 + 2 * FRAME_TOKENS, 200) and torch.isfinite(out.logits).all()
    fresh = VisionLanguageModel.from_pretrained(model.llm, model.tower, image_token_id=IMAGE_ID, video_token_id=None,
                                                projector_kind="linear")
    assert isinstance(fresh.projector, torch.nn.Linear) and fresh.image_tokens == IMAGE_TOKENS
