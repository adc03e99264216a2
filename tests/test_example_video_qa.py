"""examples/video_qa.py runs end to end: tiny random models, model folders, a transformers folder."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import CLIPVisionModel, LlamaForCausalLM, PreTrainedTokenizerFast

from projector import build_projector, save_projector
from tests.vlm_vision.fusion_fixtures import hf_video_model, make_tokenizer, scramble, text_config, vision_config

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "video_qa.py"


@pytest.fixture(scope="module")
def video_qa():
    spec = importlib.util.spec_from_file_location("video_qa", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def video(data_dir) -> str:
    return str(data_dir / "realshort.mp4")


def test_random_tiny(video_qa, video, capsys):
    answer = video_qa.main([video, "What happens in this video?", "--num-frames", "4", "--max-new-tokens", "4"])
    printed = capsys.readouterr().out
    assert "frames: 4 of " in printed and "16 of them video" in printed  # 4 frames x 2 x 2 pooled tokens
    assert isinstance(answer, str) and f"answer: {answer}" in printed


def test_llm_tower_and_projector_paths(video_qa, video, tmp_path, capsys):
    tokenizer = make_tokenizer()  # no <video> yet: added by the example, embeddings resized
    scramble(LlamaForCausalLM(text_config(vocab_size=len(tokenizer))), 1).save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    scramble(CLIPVisionModel(vision_config()), 2).save_pretrained(tmp_path / "tower")
    save_projector(scramble(build_projector("mlp2x_gelu", 32, 64), 3), tmp_path / "mm_projector.bin")
    video_qa.main([video, "what happens ?", "--num-frames", "2", "--max-new-tokens", "3", "--llm", str(tmp_path / "llm"),
                   "--tower", str(tmp_path / "tower"), "--projector", str(tmp_path / "mm_projector.bin")])
    printed = capsys.readouterr().out
    assert "frames: 2 of " in printed and "8 of them video" in printed


def test_llava_next_video_folder(video_qa, video, tmp_path, capsys):
    hf_video_model(seed=4).save_pretrained(tmp_path)
    words = {f"w{i}": i for i in range(198)} | {"<video>": 198, "<image>": 199}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=_word_level(words), pad_token="w0", eos_token="w2")
    tokenizer.save_pretrained(tmp_path)
    video_qa.main([video, "w5 w6", "--num-frames", "3", "--max-new-tokens", "2", "--llava-next-video", str(tmp_path)])
    assert "12 of them video" in capsys.readouterr().out


def _word_level(vocab: dict) -> Tokenizer:
    tk = Tokenizer(models.WordLevel(vocab, unk_token="w3"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tk
