"""Shared pieces of the data tests: a tokenizer with `<video>`/`<image>`, a visual spec, a LLaVA record."""

from __future__ import annotations

from tokenizers import AddedToken

from tests.vlm_vision.train_fixtures import QUESTION, make_tokenizer
from vlm_vision.data.record_tokens import VisualSpec


def tokenizer_with_placeholders():
    """The tiny test tokenizer with `<video>` and `<image>` as special tokens."""
    tok = make_tokenizer()
    tok.add_tokens([AddedToken("<video>", special=True), AddedToken("<image>", special=True)], special_tokens=True)
    return tok


def visual_spec(tok, per_frame: int = 4, frames: int = 3) -> VisualSpec:
    """`per_frame` tokens a frame, `frames` frames a video, 9 tokens an image."""
    return VisualSpec(token_ids={"video": tok.convert_tokens_to_ids("<video>"),
                                 "image": tok.convert_tokens_to_ids("<image>")},
                      video_tokens=lambda t: t * per_frame, image_tokens=9, tokens_per_frame=per_frame,
                      num_frames=frames)


def llava_record(video: str | None = "a.mp4", question: str = QUESTION, answer: str = "The video is mostly red.",
                 **extra) -> dict:
    """One LLaVA record: a question and its answer about `video` (none when None), plus `extra` keys."""
    rec = {"id": "x", "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    if video is not None:
        rec["video"] = video
    rec.update(extra)
    return rec
