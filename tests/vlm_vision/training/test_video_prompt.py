"""Training with time in the prompt and SlowFast tokens on the colour task; `faster_token` round trip."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from vlm_vision import TrainConfig, load_trained, train
from vlm_vision.model.run_folder import FASTER_FILE, TrainedSpec

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "train_stage1_stage2.py"


def example():
    spec = importlib.util.spec_from_file_location("train_stage1_stage2", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stage1_stage2_with_time_markers_instruction_and_slowfast(tmp_path):
    ex = example()
    data = ex.write_dataset(tmp_path / "colours", 8, frames=6)
    llm, tower = ex.write_tiny_models(tmp_path / "models")
    # 6 frames, k = 2 on the 4x4 grid with grid newlines: slow 2x3 + F = 7, fast 1x2 + F = 3 -> 30 tokens;
    # a budget of 32 keeps stride 2 (SlowFast with average pooling allows no other on this grid)
    common = dict(llm=llm, tower=tower, data=str(data), batch_size=4, num_frames=6, max_length=1024, lora_r=8,
                  lora_alpha=16, warmup_ratio=0.0, video_newline="grid", faster_token_stride=2, max_video_tokens=32,
                  time_markers=True, time_instruction=True, progress=False)
    # what the training examples hold: the time sentence, then each frame's marker before its 7 or 3 tokens
    from vlm_vision.training.log import RunLog
    from vlm_vision.training.setup import setup

    (tmp_path / "probe").mkdir()
    run = setup(TrainConfig(output_dir=str(tmp_path / "probe"), stage=1, **common),
                RunLog(tmp_path / "probe", enabled=False), main=True)
    example_ids = run.dataset[0].input_ids.tolist()
    vid = run.processor.video_token_id
    assert example_ids.count(vid) == 30
    prompt = run.processor.tokenizer.decode([i for i in example_ids if i != vid])
    markers = "".join(f"<t={i / 8:.1f}s>" for i in range(6))  # 8 fps, constant rate: frame i at i/8 s
    assert f"{markers}\nThe video lasts for 0.75 seconds, and 6 frames are uniformly sampled from it." in prompt
    assert run.model.faster_token.requires_grad and "faster_token" in run.trainable

    stage1 = Path(train(TrainConfig(output_dir=str(tmp_path / "s1"), stage=1, max_steps=4, lr=1e-2, **common)))
    spec = TrainedSpec.read(stage1)
    assert (spec.faster_token_stride, spec.max_video_tokens, spec.time_markers, spec.time_instruction) == \
        (2, 32, True, True)
    saved1 = load_file(str(stage1 / FASTER_FILE))["faster_token"]

    model, processor = load_trained(stage1)
    assert torch.equal(model.faster_token.detach(), saved1)  # the round trip is exact
    assert (processor.time_markers, processor.time_instruction, processor.layout.faster_token_stride) == \
        (True, True, 2)
    video = ex.write_video(tmp_path / "red.mp4", ex.COLOURS["red"], 6, seed=99)
    inputs = processor([{"role": "user", "content": ex.QUESTION}], videos=[video])
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(processor.video_token_id) == model.video_tokens(6) == 30
    text = processor.tokenizer.decode([i for i in ids if i != processor.video_token_id])
    assert "<t=0.0s>" in text and "<t=0.6s>" in text and "and 6 frames are uniformly sampled" in text
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3

    # vlm-vision eval asks with the same prompt (markers, sentence) and the same sampling and budget;
    # --fps/--max-frames/--max-video-tokens override the run's settings; a miscount would fail the splice
    from vlm_vision.evaluation.run import EvalConfig, run_eval
    from vlm_vision.evaluation.questions import Question
    from vlm_vision.evaluation.media import load_medium
    from vlm_vision.evaluation.answers import visual_count, with_time_instruction

    records = tmp_path / "questions.jsonl"
    records.write_text("".join(json.dumps({"id": f"q{i}", "video": f"{c}.mp4", "question": "What colour is this video?",
                                           "options": list(ex.COLOURS), "answer": c}) + "\n"
                               for i, c in enumerate(["red", "blue"])))
    for c in ("red", "blue"):
        ex.write_video(tmp_path / f"{c}.mp4", ex.COLOURS[c], 12, seed=7)
    metrics = run_eval(EvalConfig(model=str(stage1), data=[str(records)], output_dir=str(tmp_path / "eval"),
                                  fps=4.0, max_frames=5, max_video_tokens=32, num_workers=0, progress=False))
    rows = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and not any("error" in r for r in rows), rows
    assert json.loads((tmp_path / "eval" / "run.json").read_text())["settings"]["fps"] == 4.0
    # 12 frames at 8 fps, 4 fps at most 5: the recorded frames; the report samples the same ones again
    assert all(len(r["frames"]["indices"]) == len(r["frames"]["times"]) == 5 for r in rows)
    from vlm_vision.evaluation.report import ReportConfig, write_report

    page = write_report(ReportConfig(eval_dir=str(tmp_path / "eval"), progress=False)).read_text()
    assert "differ from the recorded" not in page and "could not be decoded" not in page
    assert metrics is not None
    q = Question(id="q", source="", media_kind="video", media_path=tmp_path / "red.mp4", question="?",
                 options=None, answer=None)
    item = load_medium(q, model, 6, {"fps": 4.0, "max_frames": 5})  # 12 frames at 8 fps: 0, 2, ..., 10 -> 5 uniform
    assert item.media.shape[0] == 5 and len(item.times) == 5
    span = visual_count(item, model, processor)
    assert span.count(processor.video_token_id) == model.video_tokens(5)
    assert processor.tokenizer.decode([i for i in span if i != processor.video_token_id]).startswith("<t=0.0s>")
    assert "and 5 frames are uniformly sampled" in with_time_instruction("<video>\n?", item, processor)

    # stage 2 starts from stage 1 (faster_token included) and trains it further with LoRA
    stage2 = Path(train(TrainConfig(output_dir=str(tmp_path / "s2"), stage=2, max_steps=3, lr=1e-2,
                                    init_from=str(stage1), **common)))
    saved2 = load_file(str(stage2 / FASTER_FILE))["faster_token"]
    assert not torch.equal(saved2, saved1)
    reloaded, _ = load_trained(stage2)
    assert torch.equal(reloaded.faster_token.detach(), saved2)


def test_eval_and_train_flags_take_the_sampling_and_budget_settings():
    import argparse

    from vlm_vision.commands.eval import add_arguments
    from vlm_vision.commands.train import add_arguments as train_arguments
    from vlm_vision.evaluation.run import EvalConfig

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--model", "m", "--data", "d.json", "--output-dir", "o", "--fps", "0.5",
                              "--min-frames", "8", "--max-frames", "64", "--max-video-tokens", "9216"])
    config = EvalConfig(**vars(args))
    assert (config.fps, config.min_frames, config.max_frames, config.max_video_tokens) == (0.5, 8, 64, 9216)
    parser = argparse.ArgumentParser()
    train_arguments(parser)
    args = parser.parse_args(["--llm", "l", "--tower", "t", "--data", "d", "--output-dir", "o", "--fps", "1",
                              "--max-frames", "64", "--max-video-tokens", "4096", "--faster-token-stride", "10",
                              "--time-instruction", "--time-markers"])
    assert (args.fps, args.max_frames, args.max_video_tokens, args.faster_token_stride, args.time_instruction,
            args.time_markers) == (1.0, 64, 4096, 10, True, True)
