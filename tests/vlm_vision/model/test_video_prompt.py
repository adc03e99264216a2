"""Time in the prompt: LLaVA-Video's time instruction and per-frame markers, from presentation times."""

from __future__ import annotations

import pytest
import torch

from tests.video.synth import make_numbered_video
from tests.vlm_vision.train_fixtures import make_tokenizer
from video.decode import load_video
from vlm_vision import CLIPImageTransform, VisionLanguageProcessor
from vlm_vision.model.video_prompt import time_instruction, time_marker

# variable rate: 20 fps steps with jitter and a 0.5 s gap from frame 15 on (as tests/video/test_decode.py)
VFR_TIMES = [i * 0.05 + (0.5 if i >= 15 else 0.0) + 0.02 * (i % 3) for i in range(30)]


def test_time_instruction_wording():
    assert time_instruction(61.0, [0.0, 30.5, 60.999]) == (
        "The video lasts for 61.00 seconds, and 3 frames are uniformly sampled from it. These frames are located at "
        "0.00s,30.50s,61.00s.Please answer the following questions related to this video.")
    with pytest.raises(ValueError, match="at least one frame"):
        time_instruction(1.0, [])


def test_time_marker_rounding():
    assert [time_marker(t) for t in (0, 0.04, 0.05, 0.29, 12.46, 125.0)] == \
        ["<t=0.0s>", "<t=0.0s>", "<t=0.1s>", "<t=0.3s>", "<t=12.5s>", "<t=125.0s>"]  # 0.05 is 0.05000000000000000277
    with pytest.raises(ValueError, match="frame time must be a time >= 0"):
        time_marker(-1.0)


@pytest.fixture(scope="module")
def vfr(tmp_path_factory):
    return make_numbered_video(tmp_path_factory.mktemp("vfr") / "vfr.mp4", 30, timestamps=VFR_TIMES)


def processor(**kwargs) -> VisionLanguageProcessor:
    return VisionLanguageProcessor(make_tokenizer(), CLIPImageTransform(28), grid=(4, 4), image_tokens=16,
                                   num_frames=6, **kwargs)


def test_time_instruction_from_presentation_times(vfr):
    clip = load_video(vfr, num_frames=6)
    assert clip.indices == [0, 5, 11, 17, 23, 29]
    # presentation times 0, 0.29, 0.59, 1.39, 1.69, 1.99 s; index / fps would say 0.00s,0.24s,0.53s,...
    nominal = ",".join(f"{t:.2f}s" for t in clip.timestamps)
    p = processor(time_instruction=True)
    out = p("<video>\nWhat colour is this video?", videos=[vfr])
    ids = out["input_ids"][0].tolist()
    assert ids.count(p.video_token_id) == 6 * 4
    text = p.tokenizer.decode([i for i in ids if i != p.video_token_id])
    sentence = (f"The video lasts for {clip.duration:.2f} seconds, and 6 frames are uniformly sampled from it. "
                f"These frames are located at 0.00s,0.29s,0.59s,1.39s,1.69s,1.99s.Please answer the following "
                f"questions related to this video.")
    assert text == f"\n{sentence}\nWhat colour is this video?"  # LLaVA-Video: <video>\n{instruction}\n{question}
    assert nominal not in text and ids[0] == p.video_token_id


def test_time_markers_precede_each_frame(vfr):
    p = processor(time_markers=True)
    ids = p("<video>\nWhat colour is this video?", videos=[vfr])["input_ids"][0].tolist()
    runs, text, current = [], [], []
    for i in ids:  # split into (text before a run of placeholders, run length)
        if i == p.video_token_id:
            if text or not runs:
                runs.append([p.tokenizer.decode(text), 0])
                text = []
            runs[-1][1] += 1
        else:
            text.append(i)
    assert [r[0] for r in runs] == ["<t=0.0s>", "<t=0.3s>", "<t=0.6s>", "<t=1.4s>", "<t=1.7s>", "<t=2.0s>"]
    assert [r[1] for r in runs] == [4] * 6
    assert p.tokenizer.decode(text) == "\nWhat colour is this video?"


def test_both_together_and_in_a_batch(vfr):
    p = processor(time_instruction=True, time_markers=True, padding_side="left")
    clip = load_video(vfr, num_frames=3)
    out = p(["<video> one", "two <video>"], videos=[vfr, clip])
    assert out["pixel_values_videos"] is not None and len(out["pixel_values_videos"]) == 2
    second = p.tokenizer.decode([i for i in out["input_ids"][1].tolist() if i not in (p.video_token_id,)],
                                skip_special_tokens=True)
    # frames 0, 14, 29 shown at 0, 0.74, 1.99 s; markers sit between the placeholder runs, then the sentence
    assert second == (f"two <t=0.0s><t=0.7s><t=2.0s>\nThe video lasts for {clip.duration:.2f} seconds, and 3 frames "
                      f"are uniformly sampled from it. These frames are located at 0.00s,0.74s,1.99s.Please answer "
                      f"the following questions related to this video.")


def test_bare_frames_have_no_times():
    frames = torch.zeros(2, 20, 20, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="video 0: time_instruction / time_markers need the frames' presentation"):
        processor(time_markers=True)("<video> hi", videos=[frames])


def test_processor_budget_samples_and_counts(vfr):
    # 30 frames over 2.04 s at ~14.7 fps: fps=2 takes every 7th frame (5 frames), min_frames lifts to 6;
    # a budget of 20 tokens holds 5 frames at stride 2 (4 each) but 6 need stride 4 (1 each)
    p = processor(fps=2.0, min_frames=6, max_video_tokens=20)
    assert p.layout.strides() == [2, 4]
    out = p("<video> hi", videos=[vfr])
    assert out["pixel_values_videos"].shape[1] == 6
    assert int((out["input_ids"] == p.video_token_id).sum()) == 6 * 1
    with pytest.raises(ValueError, match="min_frames=30 frames need 30 tokens"):
        processor(fps=1.0, min_frames=30, max_video_tokens=20)
