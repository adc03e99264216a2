"""Tiny random parts for the fusion, processor and interchange tests, built offline in milliseconds.

The text model is a 2-layer Llama (width 64, vocabulary 200); the tower a 2-layer CLIP (width 32)
on 28 px images with 7 px patches: a 4 x 4 grid, 16 tokens per image, and 2 x 2 = 4 tokens per
frame after stride-2 pooling. Weights are redrawn with a larger spread than transformers' init so
logits differ clearly between tokens and a parity test has something to compare.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from torch import nn
from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                          LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration, PreTrainedTokenizerFast)

VOCAB = 200
VIDEO_ID = 198
IMAGE_ID = 199
PAD_ID = 0
IMAGE_TOKENS = 16  # 4 x 4 patches
FRAME_TOKENS = 4  # 2 x 2 after pooling


def text_config(**overrides) -> LlamaConfig:
    return LlamaConfig(**{**dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256,
                                 pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=2), **overrides})


def vision_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            image_size=28, patch_size=7, projection_dim=16)


def scramble(model: nn.Module, seed: int = 0) -> nn.Module:
    """Redraw every parameter: N(0, 0.1), LayerNorm/RMSNorm scales around 1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * 0.1
            p.copy_(1 + noise if "norm" in name and name.endswith("weight") else noise)
    return model


def hf_video_model(seed: int = 0, **config_overrides) -> LlavaNextVideoForConditionalGeneration:
    config = LlavaNextVideoConfig(text_config=text_config(), vision_config=vision_config(),
                                  image_token_index=IMAGE_ID, video_token_index=VIDEO_ID, **config_overrides)
    torch.manual_seed(seed)
    return scramble(LlavaNextVideoForConditionalGeneration(config), seed).eval()


def hf_image_model(seed: int = 0, **text_overrides) -> LlavaForConditionalGeneration:
    config = LlavaConfig(text_config=text_config(**text_overrides), vision_config=vision_config(),
                         image_token_index=IMAGE_ID)
    torch.manual_seed(seed)
    return scramble(LlavaForConditionalGeneration(config), seed).eval()


def prompt(*pieces) -> list[int]:
    """Ids from pieces: ints are text ids, ("video", T) / ("image",) expand to placeholders."""
    ids = [1]
    for piece in pieces:
        if isinstance(piece, int):
            ids.append(piece)
        elif piece[0] == "video":
            ids += [VIDEO_ID] * (piece[1] * FRAME_TOKENS)
        else:
            ids += [IMAGE_ID] * IMAGE_TOKENS
    return ids


def pad(samples: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(map(len, samples))
    ids = torch.full((len(samples), length), PAD_ID)
    mask = torch.zeros((len(samples), length), dtype=torch.long)
    for row, s in enumerate(samples):
        span = slice(length - len(s), length) if side == "left" else slice(0, len(s))
        ids[row, span] = torch.tensor(s)
        mask[row, span] = 1
    return ids, mask


def pixels(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, 3, 28, 28, generator=torch.Generator().manual_seed(seed))


WORDS = ["user", "assistant", "system", "what", "happens", "in", "this", "video", "image", "?", "the", "a",
         "cat", "dog", "is", "red", "blue", "describe", ":", "."]
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] + ' : ' + m['content'] + ' </s> ' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ 'assistant :' }}{% endif %}")


def make_tokenizer(padding_side: str = "right") -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer: <pad>=0, <s>=1, </s>=2, <unk>=3, then WORDS; BOS added; no placeholders."""
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>"] + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>", padding_side=padding_side)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def to_llava_layout(hf: nn.Module) -> dict[str, torch.Tensor]:
    """Invert transformers' conversion script: the keys an lmms-lab LLaVA-NeXT-Video checkpoint holds."""
    out = {}
    for k, v in hf.state_dict().items():
        if k.startswith("model.language_model."):
            k = "model." + k.removeprefix("model.language_model.")
        elif k.startswith("model.multi_modal_projector.linear_"):
            index = int(k.split("linear_")[1][0])
            k = f"model.mm_projector.{2 * (index - 1)}." + k.rsplit(".", 1)[1]
        elif k.startswith("model.vision_tower."):
            k = "model.vision_tower.vision_tower.vision_model." + k.removeprefix("model.vision_tower.")
        out[k] = v.clone()
    return out
