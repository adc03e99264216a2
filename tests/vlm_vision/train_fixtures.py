"""Small real parts for the training tests: a byte-level BPE tokenizer with a ChatML template, a
tiny random Llama, a tiny CLIP tower, and synthetic one-colour videos written with PyAV.

Everything is built offline in well under a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
INIT_STD = 0.2
QUESTION = "<video>\nWhat colour is this video?"

_CORPUS = ["user assistant system", "What colour is this video? The video is mostly red green blue yellow.",
           "Describe the clip. A clip of a single colour."]


def make_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE (~300 ids) trained on a few sentences, ChatML template, no <video>/<image> yet."""
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(_CORPUS * 5, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = CHATML
    return tok


def make_llm(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=512,
                         tie_word_embeddings=False, initializer_range=INIT_STD)
    return LlamaForCausalLM(config)


def tower_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            image_size=28, patch_size=7, projection_dim=16)


def write_llm_folder(folder: Path, seed: int = 0) -> Path:
    """A tiny Llama and its tokenizer in one `save_pretrained` folder (what `--llm` takes)."""
    tok = make_tokenizer()
    make_llm(len(tok), seed).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_tower_folder(folder: Path, seed: int = 0) -> Path:
    """A tiny random transformers `CLIPVisionModel` folder (what `--tower` takes)."""
    torch.manual_seed(seed)
    CLIPVisionModel(tower_config()).save_pretrained(folder)
    return folder


def write_colour_video(path: Path, rgb: tuple[int, int, int], frames: int = 4, size: int = 32, seed: int = 0) -> Path:
    """An H.264 video of `frames` frames, each `rgb` with a little noise."""
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            image = np.clip(np.array(rgb) + rng.integers(-20, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def mostly(index: int, colour: str) -> str:
    """The answer the colour task trains on."""
    return f"The video is mostly {colour}."


def write_colour_dataset(root: Path, n: int = 8, frames: int = 4, name: str = "train.jsonl",
                         answer=mostly) -> Path:
    """`n` one-colour videos under root/videos and a JSONL of 'what colour?' conversations whose
    answers are `answer(index, colour)`."""
    (root / "videos").mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    lines = []
    for i in range(n):
        colour = names[i % len(names)]
        rel = f"videos/{colour}_{i}.mp4"
        if not (root / rel).exists():
            write_colour_video(root / rel, COLOURS[colour], frames=frames, seed=i)
        lines.append({"id": f"s{i}", "video": rel,
                      "conversations": [{"from": "human", "value": QUESTION},
                                        {"from": "gpt", "value": answer(i, colour)}]})
    path = root / name
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path
