"""NewTokenRows: K trainable rows spliced into frozen embeddings train exactly like row-masked whole matrices."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from vlm_vision.model.new_token_rows import NewTokenRows

IDS = [61, 62]


def tiny_llm(tied: bool) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, vocab_size=64,
                                        tie_word_embeddings=tied))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[1, 61, 5, 9, 62, 7, 61, 3], [4, 62, 62, 8, 2, 61, 10, 11]])  # (2, 8)
    return ids, ids.clone()


def reference_steps(llm: LlamaForCausalLM, steps: int, keep: int) -> list[float]:
    """The old way: whole matrices train, a gradient hook zeroes every row but IDS."""
    weights = list({id(w): w for w in (llm.get_input_embeddings().weight, llm.get_output_embeddings().weight)}.values())
    llm.requires_grad_(False)
    for weight in weights:
        weight.requires_grad_(True)
        mask = torch.zeros(weight.shape[0], 1)  # (V, 1)
        mask[IDS] = 1
        weight.register_hook(lambda grad, mask=mask: grad * mask)
    return run_steps(llm, weights, steps, keep)


def run_steps(llm: LlamaForCausalLM, params: list[torch.Tensor], steps: int, keep: int) -> list[float]:
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    ids, labels = batch()
    losses = []
    for _ in range(steps):
        if keep:  # the LM head runs on the last `keep` positions only (as `labelled_loss` does)
            logits = llm(input_ids=ids, logits_to_keep=keep).logits  # (B, keep, V)
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1 - keep:].flatten())
        else:
            loss = llm(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("keep", [0, 5])
def test_rows_train_like_whole_matrices_with_a_row_mask(tied, keep):
    ref = tiny_llm(tied)
    new = copy.deepcopy(ref)
    if tied:
        assert new.get_output_embeddings().weight is new.get_input_embeddings().weight
    start = {n: p.detach().clone() for n, p in new.named_parameters()}
    expected = reference_steps(ref, 3, keep)
    new.requires_grad_(False)
    rows = NewTokenRows(new, IDS)
    assert (rows.output is None) == tied
    got = run_steps(new, list(rows.parameters()), 3, keep)
    assert got == pytest.approx(expected, abs=1e-6)
    assert len(set(got)) == 3  # the rows did move
    ref_in, ref_out = ref.get_input_embeddings().weight, ref.get_output_embeddings().weight
    torch.testing.assert_close(rows.input, ref_in[IDS], atol=1e-6, rtol=0)
    torch.testing.assert_close(rows.output if rows.output is not None else rows.input, ref_out[IDS], atol=1e-6, rtol=0)
    others = [i for i in range(64) if i not in IDS]
    assert torch.equal(ref_in[others], start["model.embed_tokens.weight"][others])  # the reference keeps them too
    assert all(torch.equal(p, start[n]) for n, p in new.named_parameters())  # the matrices never move
    # Generation-style calls (no labels, all positions) see the trained rows as well.
    with torch.no_grad():
        torch.testing.assert_close(new(input_ids=batch()[0]).logits, ref(input_ids=batch()[0]).logits,
                                   atol=1e-5, rtol=0)


def test_rows_load_checks_ids_and_tying():
    llm = tiny_llm(False)
    rows = NewTokenRows(llm, IDS)
    saved = rows.saved(rows.input * 2, rows.output * 3)
    rows.load(saved)
    assert torch.equal(rows.input, saved["input"]) and torch.equal(rows.output, saved["output"])
    with pytest.raises(ValueError, match="ids"):
        rows.load({**saved, "ids": torch.tensor([1, 2])})
    with pytest.raises(ValueError, match="tied"):
        rows.load({"ids": saved["ids"], "input": saved["input"]})
    rows.remove()
    with torch.no_grad():
        assert torch.equal(llm.get_input_embeddings()(torch.tensor([61])), llm.get_input_embeddings().weight[[61]])
