"""The base LLM and its tokenizer: loading them, the id that pads a batch, whether the LM head can be cut.

The LLM is any transformers causal LM, read from a Hub id, a folder, or a `.gguf` file (which
transformers dequantises; it is loaded from its folder with `gguf_file=`). The tokenizer is read the
same way. Training, evaluation and export all load them here, and all pad batches with the one id
`padding_id` gives.

Why `takes_logits_to_keep`: an LLM whose forward takes `logits_to_keep` runs the LM head only at
the positions asked for, so a loss or a score over a few labelled tokens does not build the whole
float[B, L, V] logits. Training's loss and evaluation's option scoring both ask it.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

__all__ = ["load_llm", "load_tokenizer", "padding_id", "takes_logits_to_keep"]


def _gguf_split(name_or_path: str) -> tuple[str, dict[str, str]]:
    # A `.gguf` file is loaded by transformers from its folder with `gguf_file=`.
    path = Path(name_or_path)
    if path.suffix == ".gguf":
        return str(path.parent), {"gguf_file": path.name}
    return name_or_path, {}


def load_llm(name_or_path: str, dtype: torch.dtype | None = None) -> nn.Module:
    """A transformers causal LM from a Hub id, a folder, or a `.gguf` file (dequantised)."""
    where, extra = _gguf_split(name_or_path)
    return AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **extra)


def load_tokenizer(name_or_path: str) -> Any:
    """The fast tokenizer of a Hub id, a folder, or a `.gguf` file."""
    where, extra = _gguf_split(name_or_path)
    return AutoTokenizer.from_pretrained(where, **extra)


def padding_id(tokenizer: Any) -> int:
    """The id that pads a batch: the tokenizer's pad token, else its end-of-sequence token (padded
    positions are masked out, so any id the LLM embeds will do).

    Raises:
        ValueError: when the tokenizer has neither.
    """
    for pad_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if pad_id is not None:
            return pad_id
    raise ValueError("the tokenizer has neither a pad nor an eos token to pad with; set tokenizer.pad_token")


def takes_logits_to_keep(llm: nn.Module) -> bool:
    """Whether the LLM's forward (under a PEFT wrapper: the base model's) takes `logits_to_keep`."""
    core = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    return _forward_takes_logits_to_keep(type(core))


@functools.lru_cache(maxsize=None)
def _forward_takes_logits_to_keep(cls: type) -> bool:
    # once per class, not on every training step
    return "logits_to_keep" in inspect.signature(cls.forward).parameters
