"""A tiny random CLIP and a real CLIP tokenizer built offline, for the zero-shot and training tests.

The tokenizer is a genuine byte-level BPE `CLIPTokenizer` read from `vocab.json` + `merges.txt`:
the 256 byte symbols (alone and word-final, `x</w>`), merges that build a few whole words, and
CLIP's two special tokens given the highest ids, as in the real vocabulary. Any text still
tokenizes (into single characters when its words are not merged).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import PIL.Image
import torch
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

WORDS = ("a", "photo", "of", "the", "red", "green", "blue", "yellow", "white", "black", "cyan", "magenta",
         "cat", "dog", "square", "colour")


def write_tokenizer_files(folder: pathlib.Path, words=WORDS) -> pathlib.Path:
    """Write `vocab.json` and `merges.txt` of a tiny CLIP BPE vocabulary into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = sorted(ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({s + "</w>": len(symbols) + i for i, s in enumerate(symbols)})
    merges: list[str] = []
    for word in words:  # merge left to right: "r e" -> "re", "re d</w>" -> "red</w>"
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        merged = pieces[0]
        for piece in pieces[1:]:
            rule = f"{merged} {piece}"
            if rule not in merges:
                merges.append(rule)
            merged += piece
            vocab.setdefault(merged, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return folder


def tiny_tokenizer(folder: pathlib.Path) -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(write_tokenizer_files(folder), model_max_length=77)


def tiny_clip(tokenizer: CLIPTokenizer, image_size: int = 32, seed: int = 0) -> CLIPModel:
    """A random 2-layer CLIP (width 32, 8 px patches, 16-d embeddings) matching the tokenizer."""
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(image_size=image_size, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    return CLIPModel(config).eval()


def save_tiny_clip(folder: pathlib.Path, seed: int = 0) -> pathlib.Path:
    """A folder as `CLIPModel.save_pretrained` + `tokenizer.save_pretrained` write it."""
    tokenizer = tiny_tokenizer(folder / "_tokenizer_src")
    tiny_clip(tokenizer, seed=seed).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    return folder / "model"


def write_colour_squares(media: pathlib.Path, colours: dict[str, tuple[int, int, int]], per_colour: int,
                         seed: int = 0) -> list[dict[str, str]]:
    """Write `per_colour` noisy 32x32 PNGs of each colour into `media` (`{name}{k}.png`); their records
    (`image`, `caption`: "a photo of a {name} square"), in writing order."""
    media.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for name, rgb in colours.items():
        for k in range(per_colour):
            pixels = np.clip(np.array(rgb) + rng.integers(-25, 26, size=(32, 32, 3)), 0, 255).astype(np.uint8)
            PIL.Image.fromarray(pixels).save(media / f"{name}{k}.png")
            records.append({"image": f"{name}{k}.png", "caption": f"a photo of a {name} square"})
    return records
