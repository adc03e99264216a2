"""VisionLanguageProcessor: special tokens, exact placeholder expansion, truncation, padding, chat."""

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from projector import build_projector
from tests.vlm_vision.fusion_fixtures import make_tokenizer, scramble, text_config, vision_config
from vlm_vision import CLIPImageTransform, CLIPVisionTower, VisionLanguageModel, VisionLanguageProcessor

TRANSFORM = CLIPImageTransform(28)


def frames(t: int, seed: int = 0, size: int = 20) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, size, size, 3), dtype=np.uint8)


def make_processor(**kwargs) -> VisionLanguageProcessor:
    kwargs = {"grid": (4, 4), "image_tokens": 16, "num_frames": 4} | kwargs
    return VisionLanguageProcessor(make_tokenizer(), TRANSFORM, **kwargs)


# ----- special tokens -------------------------------------------------------------------------------


def test_placeholders_become_single_special_tokens():
    tok = make_tokenizer()
    size = len(tok)
    processor = VisionLanguageProcessor(tok, TRANSFORM)
    assert processor.added_tokens == ["<image>", "<video>"] and len(tok) == size + 2
    assert {processor.image_token_id, processor.video_token_id} == {size, size + 1}
    assert tok("what<video>is", add_special_tokens=False)["input_ids"][1] == processor.video_token_id
    assert VisionLanguageProcessor(tok, TRANSFORM).added_tokens == []  # already there
    decoded = processor.batch_decode(torch.tensor([[1, processor.video_token_id, 7]]))
    assert decoded == ["what"]


def test_resize_embeddings_grows_the_llm():
    processor = make_processor()
    llm = LlamaForCausalLM(text_config(vocab_size=len(processor.tokenizer) - 2))
    processor.resize_embeddings(llm)
    assert llm.get_input_embeddings().num_embeddings == len(processor.tokenizer)
    assert llm.get_output_embeddings().out_features == len(processor.tokenizer)


# ----- expansion --------------------------------------------------------------------------------------


@pytest.mark.parametrize("newline, stride, t, expected", [
    ("no_token", 2, 32, 4608),
    ("no_token", 1, 2, 1152),
    ("no_token", 4, 32, 1152),
    ("one_token", 2, 32, 4609),
    ("frame", 2, 32, 4640),
    ("grid", 2, 32, 4992),
    ("grid", 4, 3, 3 * 6 * 7),
    ("frame", 1, 1, 577),
])
def test_video_expands_to_exact_token_count(newline, stride, t, expected):
    processor = make_processor(grid=(24, 24), pool_stride=stride, video_newline=newline)
    out = processor("what happens <video> ?", videos=[frames(t, size=8)])
    assert int((out["input_ids"] == processor.video_token_id).sum()) == expected
    assert out["pixel_values_videos"].shape == (1, t, 3, 28, 28)


def test_text_around_placeholders_is_tokenized_as_without_them():
    processor = make_processor()
    out = processor("what happens in this video <video> ? describe this image <image> .",
                    videos=[frames(3)], images=[frames(1)[0]])
    ids = out["input_ids"][0].tolist()
    assert ids.count(processor.video_token_id) == 3 * 4 and ids.count(processor.image_token_id) == 16
    text_only = [i for i in ids if i not in (processor.video_token_id, processor.image_token_id)]
    assert text_only == processor.tokenizer("what happens in this video ? describe this image .")["input_ids"]
    assert out["pixel_values"].shape == (1, 3, 28, 28)
    torch.testing.assert_close(out["pixel_values"], TRANSFORM(frames(1)[0]))


def test_media_in_prompt_order_across_the_batch():
    processor = make_processor()
    out = processor(["<video> what", "the <video> and <video>"], videos=[frames(1), frames(2), frames(3)])
    counts = (out["input_ids"] == processor.video_token_id).sum(1).tolist()
    assert counts == [4, 8 + 12]
    assert isinstance(out["pixel_values_videos"], list) and [v.shape[0] for v in out["pixel_values_videos"]] == [1, 2, 3]


def test_media_count_must_match_placeholders():
    processor = make_processor()
    with pytest.raises(ValueError, match="hold 2 <video> placeholders but 1 videos were given"):
        processor("<video> <video>", videos=[frames(2)])
    with pytest.raises(ValueError, match="hold 0 <image> placeholders but 1 images were given"):
        processor("what", images=[frames(1)[0]])


# ----- truncation -------------------------------------------------------------------------------------


def test_truncation_cuts_text_only():
    processor = make_processor()
    out = processor("<video> what happens in this video ?", videos=[frames(2)], max_length=12, truncation=True)
    ids = out["input_ids"][0].tolist()
    assert len(ids) == 12 and ids[:9] == [1] + [processor.video_token_id] * 8


def test_truncation_refuses_to_cut_a_visual_span():
    processor = make_processor()
    with pytest.raises(ValueError, match=r"sample 1 needs at least 15 tokens to keep its 12 visual tokens whole "
                                         r"\(17 in all\), but max_length is 10"):
        processor(["what", "what happens <video> ? ."], videos=[frames(3)], max_length=10, truncation=True)
    processor.tokenizer.truncation_side = "left"
    with pytest.raises(ValueError, match="needs at least 14 tokens"):
        processor(["what happens <video> ? ."], videos=[frames(3)], max_length=10, truncation=True)
    out = processor(["what happens <video> ? ."], videos=[frames(3)], max_length=14, truncation=True)
    assert out["input_ids"][0, 0] == processor.video_token_id  # text cut on the left


def test_without_truncation_nothing_is_cut():
    processor = make_processor()
    out = processor("what happens <video> ? .", videos=[frames(3)], max_length=5)
    assert out["input_ids"].shape == (1, 17)


# ----- padding ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_sides(side):
    processor = make_processor(padding_side=side)
    out = processor(["what", "what happens <video>"], videos=[frames(1)])
    mask = out["attention_mask"]
    assert out["input_ids"].shape == (2, 7) and mask.sum(1).tolist() == [2, 7]
    expected = [0] * 5 + [1] * 2 if side == "left" else [1] * 2 + [0] * 5
    assert mask[0].tolist() == expected
    assert (out["input_ids"][0][mask[0] == 0] == processor.tokenizer.pad_token_id).all()
    other = "right" if side == "left" else "left"
    assert processor(["what", "what happens"], padding_side=other)["attention_mask"][0].tolist() == \
        ([0, 1, 1] if other == "left" else [1, 1, 0])


def test_padding_modes():
    processor = make_processor()
    assert processor(["what", "a"], padding="max_length", max_length=6)["input_ids"].shape == (2, 6)
    with pytest.raises(ValueError, match=r"padding=False but the samples have lengths \[2, 3\]"):
        processor(["what", "a cat"], padding=False)
    with pytest.raises(ValueError, match="padding_side must be 'left' or 'right', got 'top'"):
        processor("what", padding_side="top")


# ----- chat template ----------------------------------------------------------------------------------


def test_chat_template_with_typed_parts():
    processor = make_processor()
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "what happens ?"}]}]
    assert processor.apply_chat_template(conversation) == "<s>user : <video>\nwhat happens ? </s> assistant :"
    out = processor(conversation, videos=[frames(2)])
    ids = out["input_ids"][0].tolist()
    assert ids.count(1) == 1 and ids[0] == 1  # the template's BOS only
    assert ids.count(processor.video_token_id) == 8
    plain = processor([[{"role": "user", "content": "<video> what happens ?"}]], videos=[frames(2)])
    assert plain["input_ids"][0].tolist() == ids
    with pytest.raises(ValueError, match="unknown message part type 'audio'"):
        processor([{"role": "user", "content": [{"type": "audio"}]}])


# ----- with the model ---------------------------------------------------------------------------------


@pytest.mark.parametrize("newline", ["no_token", "one_token", "frame", "grid"])
def test_processor_output_feeds_the_model(newline):
    tok = make_tokenizer()
    processor_ids = VisionLanguageProcessor(tok, TRANSFORM)
    llm = scramble(LlamaForCausalLM(text_config(vocab_size=len(tok))), 1)
    tower = CLIPVisionTower(vision_config())
    model = VisionLanguageModel(tower, build_projector("mlp2x_gelu", 32, 64), llm, video_newline=newline,
                                image_token_id=processor_ids.image_token_id, video_token_id=processor_ids.video_token_id)
    processor = VisionLanguageProcessor.for_model(tok, model, padding_side="left")
    assert (processor.grid, processor.image_tokens, processor.video_newline) == ((4, 4), 16, newline)
    batch = processor(["what happens <video> ?", "describe <image> and <video>"],
                      videos=[frames(2), frames(3)], images=[frames(1)[0]])
    out = model(**batch)
    assert out.logits.shape[:2] == batch["input_ids"].shape


def test_for_model_checks_ids():
    tok = make_tokenizer()
    llm = LlamaForCausalLM(text_config(vocab_size=len(tok) + 2))
    model = VisionLanguageModel(CLIPVisionTower(vision_config()), build_projector("linear", 32, 64), llm,
                                image_token_id=5, video_token_id=6)
    with pytest.raises(ValueError, match="the tokenizer's image placeholder has id 24 but the model expects 5"):
        VisionLanguageProcessor.for_model(tok, model)


def _write_video(path, n: int = 12, size: int = 32):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(n):
            image = np.full((size, size, 3), 20 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_video_paths_are_decoded_with_num_frames(tmp_path):
    from video.decode import load_video

    path = _write_video(tmp_path / "ramp.mp4")
    processor = make_processor(num_frames=4)
    out = processor("what happens <video> ?", videos=[path])
    assert out["pixel_values_videos"].shape == (1, 4, 3, 28, 28)
    assert int((out["input_ids"] == processor.video_token_id).sum()) == 16
    clip = load_video(path, num_frames=4)
    torch.testing.assert_close(out["pixel_values_videos"][0], TRANSFORM(clip.frames))
    from_clip = processor("what happens <video> ?", videos=[clip])
    torch.testing.assert_close(from_clip["pixel_values_videos"], out["pixel_values_videos"])
