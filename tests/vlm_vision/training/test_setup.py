"""Setup: `max_length` follows the LLM's context, and 32 frames x 144 tokens train with the defaults;
a video that cannot fit stops the run before any media is read, saying what to change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from tests.vlm_vision.train_fixtures import QUESTION, make_tokenizer, write_colour_video
from vlm_vision import TrainConfig, train
from vlm_vision.training.setup import MIN_TEXT, llm_context, resolve_max_length, video_fit_error


def tokens_of(frames: int, per_frame: int = 144, newline_per_frame: int = 0):
    return lambda f: f * (per_frame + newline_per_frame)


def test_resolve_max_length_prefers_the_flag_then_the_context_then_a_budget():
    assert resolve_max_length(512, 32768, 4608) == (512, "--max-length")
    assert resolve_max_length(None, 32768, 4608) == (32768, "the LLM's context")
    assert resolve_max_length(None, None, 4608)[0] == 4608 + 1024


def test_llm_context_reads_the_config_then_a_sane_tokenizer_limit():
    class Tok:
        model_max_length = int(1e30)  # what transformers reports when the model sets none

    assert llm_context(LlamaConfig(max_position_embeddings=8192), Tok()) == 8192
    Tok.model_max_length = 4096
    assert llm_context(object(), Tok()) == 4096
    Tok.model_max_length = int(1e30)
    assert llm_context(object(), Tok()) is None


def test_a_video_that_cannot_fit_names_frames_tokens_and_flags():
    message = video_fit_error(32, 144, tokens_of(32), 2048, "--max-length")
    assert "32 frames x 144 tokens = 4608 visual tokens" in message
    assert f"raise --max-length to {4608 + MIN_TEXT}" in message and "--num-frames to 13 or fewer" in message
    assert video_fit_error(32, 144, tokens_of(32), 8192, "the LLM's context") is None
    newline = video_fit_error(32, 144, tokens_of(32, newline_per_frame=1), 4608, "x")
    assert "+ 32 newline tokens" in newline


# ----- with real parts: a tower of 24 x 24 patches (144 pooled tokens per frame) ------------------


def write_parts(root: Path, context: int, hidden: int = 64) -> dict[str, str]:
    """A tiny Llama with `context` positions, a tiny 336 px / patch 14 CLIP and 2 one-colour 32-frame videos."""
    tok = make_tokenizer()
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                                 num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=context,
                                 tie_word_embeddings=False)).save_pretrained(root / "llm")
    tok.save_pretrained(root / "llm")
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     image_size=336, patch_size=14)).save_pretrained(root / "tower")
    lines = []
    for i, (colour, rgb) in enumerate({"red": (220, 30, 30), "blue": (30, 40, 220)}.items()):
        write_colour_video(root / f"{colour}.mp4", rgb, frames=32, seed=i)
        lines.append({"id": colour, "video": f"{colour}.mp4", "conversations": [
            {"from": "human", "value": QUESTION}, {"from": "gpt", "value": f"The video is mostly {colour}."}]})
    (root / "train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return {"llm": str(root / "llm"), "tower": str(root / "tower"), "data": str(root / "train.jsonl")}


def test_32_frames_of_144_tokens_train_with_the_defaults(tmp_path, capsys):
    parts = write_parts(tmp_path, context=8192)
    out = tmp_path / "run"
    # Only what a run must name, and a short one: frames, max_length, dtype and precision are the defaults.
    final = train(TrainConfig(**parts, output_dir=str(out), max_steps=1, progress=False))
    printed = capsys.readouterr().out
    assert "max_length 8192 (from the LLM's context); a 32-frame video takes 4608 visual tokens" in printed
    assert "runtime on cpu: model_dtype=float32 (auto), mixed_precision=no (auto)" in printed
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["loss"] > 0
    assert not (out / "skipped.jsonl").exists()  # no video was dropped
    spec = json.loads((final / "vlm_config.json").read_text())
    assert spec["train"]["max_length"] == 8192 and spec["train"]["num_frames"] == 32
    assert spec["train"]["model_dtype"] == "float32" and spec["train"]["gradient_checkpointing"] is False


def test_a_context_too_short_for_the_frames_stops_before_any_work(tmp_path):
    parts = write_parts(tmp_path, context=2048)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"32 frames x 144 tokens = 4608 visual tokens.*max_length=2048 "
                                         r"\(from the LLM's context\); raise --max-length to 4672 or more or "
                                         r"lower --num-frames to 13 or fewer"):
        train(TrainConfig(**parts, output_dir=str(out), max_steps=1, progress=False))
    assert not (out / "log.jsonl").exists() and not (out / "skipped.jsonl").exists()


def test_the_dataset_pickles_without_the_model(tmp_path):
    """DataLoader workers receive the dataset pickled: it must not drag the model along."""
    import pickle

    from vlm_vision.training.log import RunLog
    from vlm_vision.training.setup import setup

    parts = write_parts(tmp_path, context=8192, hidden=512)
    out = tmp_path / "run"
    out.mkdir()
    run = setup(TrainConfig(**parts, output_dir=str(out), progress=False), RunLog(out, enabled=False), main=True)
    model_bytes = sum(p.numel() * p.element_size() for p in run.model.parameters())
    pickled = len(pickle.dumps(run.dataset))
    assert model_bytes > 10_000_000 and pickled < 1_000_000, (model_bytes, pickled)
    assert pickle.loads(pickle.dumps(run.dataset))[0].input_ids.equal(run.dataset[0].input_ids)


def test_fp16_weights_with_fp16_autocast_train_float32_parameters(tmp_path):
    """fp16 frozen weights with fp16 mixed precision: whatever trains (projector, LoRA, new token rows) is float32."""
    from vlm_vision.training.log import RunLog
    from vlm_vision.training.setup import setup

    parts = write_parts(tmp_path, context=8192)
    out = tmp_path / "run"
    out.mkdir()
    run = setup(TrainConfig(**parts, output_dir=str(out), stage=2, lora_r=4, lora_alpha=8, model_dtype="float16",
                            mixed_precision="fp16", train_new_token_embeddings=True, progress=False),
                RunLog(out, enabled=False), main=True)
    trainable = {n: p.dtype for n, p in run.model.named_parameters() if p.requires_grad}
    assert "new_token_rows.input" in trainable and any("lora_" in n for n in trainable)
    assert set(trainable.values()) == {torch.float32}, trainable
    frozen = {p.dtype for n, p in run.model.llm.named_parameters() if not p.requires_grad}
    assert frozen == {torch.float16}


def test_adamw_keeps_state_only_for_the_new_token_rows(tmp_path):
    """With new token rows training, AdamW's state holds K x D per embedding matrix, not V x D."""
    from vlm_vision.training.loss import labelled_loss, model_inputs
    from vlm_vision.training.log import RunLog
    from vlm_vision.training.params import param_groups
    from vlm_vision.training.setup import setup

    parts = write_parts(tmp_path, context=8192)
    out = tmp_path / "run"
    out.mkdir()
    config = TrainConfig(**parts, output_dir=str(out), num_frames=4, train_new_token_embeddings=True, progress=False)
    run = setup(config, RunLog(out, enabled=False), main=True)
    model = run.model
    llm = model.llm
    vocab, width = llm.get_input_embeddings().weight.shape
    k = len(run.spec.new_token_ids)
    assert k == 2 and not llm.get_input_embeddings().weight.requires_grad
    assert not llm.get_output_embeddings().weight.requires_grad
    before = {n: p.detach().clone() for n, p in llm.named_parameters()}
    optimizer = torch.optim.AdamW(param_groups(model, run.config), betas=(0.9, 0.999))
    batch = model_inputs([run.dataset[0]], run.processor.tokenizer.pad_token_id, model.tower,
                         stride_for=model.video_layout.stride_for)
    labelled_loss(model, batch, reduction="sum").backward()
    optimizer.step()
    rows = [p for g in optimizer.param_groups if g["name"] == "new_token_rows" for p in g["params"]]
    assert [tuple(p.shape) for p in rows] == [(k, width), (k, width)]
    others = sum(p.numel() for g in optimizer.param_groups if g["name"] != "new_token_rows" for p in g["params"])
    state = sum(s["exp_avg"].numel() for s in optimizer.state.values())
    assert state == others + 2 * k * width < others + vocab * width, (state, others, vocab, width)
    assert sum(s["exp_avg_sq"].numel() for s in optimizer.state.values()) == state
    assert model.new_token_rows.output.grad.abs().sum() > 0  # the output rows did get a gradient
    assert all(torch.equal(p, before[n]) for n, p in llm.named_parameters())  # the matrices never move
