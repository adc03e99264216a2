"""The `<image>`/`<video>` embedding rows as small trainable tensors, so AdamW keeps state for them only.

`NewTokenRows` holds `input` float[K, D] (and `output` float[K, D] when the LLM's output embedding
is a separate matrix) for the K added token ids. Forward hooks splice them into the frozen
matrices' results: the input embedding's output at positions whose id is a new one, and the LM
head's logits of the new ids (`hidden @ rows.T`, plus the head's bias). The matrices themselves
never change during training; `save_trained` writes these rows, and `load_trained_weights` refreshes
them from a loaded folder, so the saved files are the same as when the whole matrices trained.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["NewTokenRows"]


class NewTokenRows(nn.Module):
    """Trainable rows of `ids` spliced into an LLM's (frozen) input and output embeddings by hooks."""

    def __init__(self, llm: nn.Module, ids: Sequence[int]) -> None:
        """Copy the current rows of `ids` from `llm` (the base model, not a peft wrapper) and hook it."""
        super().__init__()
        ids = sorted(int(i) for i in ids)
        if not ids:
            raise ValueError("NewTokenRows needs at least one token id")
        emb = llm.get_input_embeddings()
        head = llm.get_output_embeddings()
        if ids[-1] >= emb.num_embeddings:
            raise ValueError(f"token id {ids[-1]} is outside the LLM's {emb.num_embeddings} input embeddings")
        self.register_buffer("ids", torch.tensor(ids, dtype=torch.long, device=emb.weight.device), persistent=False)
        self.input = nn.Parameter(emb.weight.detach()[self.ids].clone())  # (K, D)
        self.register_parameter("output", None)
        if head is not None and head.weight is not emb.weight:
            self.output = nn.Parameter(head.weight.detach()[self.ids.to(head.weight.device)].clone())  # (K, D)
        # The hooks go through this module's own call, so engines that gather a module's parameters
        # around its forward (DeepSpeed ZeRO-3) see the rows used.
        self._handles = [emb.register_forward_hook(self._input_hook)]
        if head is not None:
            self._handles.append(head.register_forward_hook(self._head_hook))

    def _input_hook(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return self(module, args, out, "input")

    def _head_hook(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        return self(module, args, out, "head")

    def remove(self) -> None:
        """Detach the hooks from the LLM (the rows are then no longer used)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def forward(self, module: nn.Module, args: tuple, out: torch.Tensor, where: str) -> torch.Tensor:
        """`out` of the input embedding (`where="input"`) or the LM head (`"head"`) with the rows spliced in."""
        return self._embed(module, args, out) if where == "input" else self._head(module, args, out)

    def _embed(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        input_ids = args[0] if args else None
        if input_ids is None:
            return out
        ids = self.ids.to(input_ids.device)
        slot = torch.searchsorted(ids, input_ids).clamp(max=len(ids) - 1)  # same shape as input_ids
        hit = ids[slot] == input_ids  # same shape as input_ids
        rows = self.input[slot.to(self.input.device)].to(device=out.device, dtype=out.dtype)  # (..., D)
        scale = getattr(module, "embed_scale", None)  # embeddings that scale their output (Gemma's)
        if scale is not None:
            rows = rows * torch.as_tensor(scale, device=out.device).to(out.dtype)
        return torch.where(hit.unsqueeze(-1), rows, out)  # (..., D)

    def _head(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        hidden = args[0]  # (..., D)
        rows = self.input if self.output is None else self.output  # (K, D)
        ids = self.ids.to(out.device)
        logits = hidden @ rows.to(device=hidden.device, dtype=hidden.dtype).T  # (..., K)
        bias = getattr(module, "bias", None)
        if bias is not None:
            logits = logits + bias.detach()[ids.to(bias.device)].to(logits.dtype)  # (..., K)
        # In place: the head's backward needs its weight, not its output, and a copy of the logits
        # would double their memory.
        return out.index_copy_(-1, ids, logits.to(out.dtype))  # (..., V)

    @torch.no_grad()
    def load(self, rows: dict[str, torch.Tensor]) -> None:
        """Copy rows saved by `vlm_vision.model.run_folder.token_rows` (`ids`, `input`, optional `output`) in."""
        if rows["ids"].tolist() != self.ids.tolist():
            raise ValueError(f"stored token rows are for ids {rows['ids'].tolist()}, "
                             f"the trained rows for {self.ids.tolist()}")
        if (self.output is None) != ("output" not in rows):
            raise ValueError("the stored token rows and the LLM disagree on whether input and output "
                             "embeddings are tied; was the same base LLM used?")
        self.input.copy_(rows["input"])
        if self.output is not None:
            self.output.copy_(rows["output"])

    def saved(self, input_rows: torch.Tensor, output_rows: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The rows (this module's, or whole copies of them) in `token_rows`' layout, on the CPU."""
        rows = {"ids": self.ids.cpu(), "input": input_rows.detach().cpu().contiguous()}
        if output_rows is not None:
            rows["output"] = output_rows.detach().cpu().contiguous()
        return rows
