"""Run a model on evaluation questions: read them, load each one's medium, answer in batches.

`answer_questions` is the whole path, used by `vlm-vision eval` (`vlm_vision.evaluation.run`) and by
training's periodic evaluation alike: questions in, one scored row per question out. The model is
loaded by `vlm_vision.evaluation.model`, each medium by `vlm_vision.evaluation.media`.

Why each video goes through the tower once: a multiple-choice question is answered twice (a
generated letter, then every option scored by log-likelihood), so the pooled tower tokens of each
video are computed once and passed to the model as `video_features` for every sequence that
needs them; only the cheap projector runs again. Token files (`vlm-vision extract`) are pooled
tower tokens already and skip the tower altogether.

Why generation is left-padded and scoring right-padded: generation appends after the last
column, so every prompt must end there; scoring reads log-probabilities at labelled positions,
wherever they are. Positions come from the attention mask in both cases, so a question gets the
same answer in a batch of 1 or of 8.

Shapes: B batch, L sequence, T frames, N' pooled tokens per frame, D_v tower width, S image side,
K kept positions, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlm_vision.model.llm import padding_id, takes_logits_to_keep
from vlm_vision.data.conversation_tokens import tokenize_conversation
from vlm_vision.data.files import Skipped
from vlm_vision.evaluation.questions import LETTERS, Question, choice_prompt, exact_match, log_fields, open_prompt, parse_choice, parse_question, token_f1
from vlm_vision.data.formats import BadSample as BadRecord
from vlm_vision.evaluation.media import Loaded, QuestionMedia
from vlm_vision.model.fusion_steps import encode_videos
from vlm_vision.model.placeholders import IGNORE_INDEX
from vlm_vision.data.question_files import question_rows
from vlm_vision.data.record_tokens import expand_placeholder
from vlm_vision.data.examples import Example, pad_batch
from vlm_vision.model.video_prompt import time_instruction

# `load_eval_model` and `model_identity` live in `eval_model`; they are importable from here too.
__all__ = [
    "read_questions",
    "answer_questions",
    "eval_questions",
    "question_accuracy",
    "visual_count",
    "with_time_instruction",
    "prompt_ids",
    "prompt_token_counts",
    "pooled_features",
    "stop_ids",
]


# ----- questions ----------------------------------------------------------------------------------


def read_questions(paths: Sequence[str], media_root: str | None, limit: int | None = None, *,
                   cache_dir: str | Path | None = None) -> tuple[list[Question], list[dict[str, str]], int]:
    """Parse the records of every data file (JSON, JSONL or Parquet: `vlm_vision.data.question_files`), in order.

    With `cache_dir`, JSON and JSONL files are read through the memory-mapped record store there.

    Returns:
        (questions, bad, records): the questions, `{"id", "source", "reason"}` for each bad record
        (a duplicate of an earlier (source, id) is bad too), and how many records were read
        (at most `limit`).
    """
    questions, bad, seen, count = [], [], set(), 0
    for path in paths:
        root = Path(media_root) if media_root else Path(path).parent
        source = Path(path).name
        for index, raw in enumerate(question_rows(path, cache_dir)):
            if limit is not None and count >= limit:
                return questions, bad, count
            count += 1
            if isinstance(raw, Skipped):
                bad.append({"id": raw.id, "source": source, "reason": raw.reason})
                continue
            try:
                question = parse_question(raw, root, source=source, index=index)
            except BadRecord as e:
                bad.append({"id": e.sample_id, "source": source, "reason": e.reason})
                continue
            if (source, question.id) in seen:
                bad.append({"id": question.id, "source": source, "reason": "duplicate id (the first one is kept)"})
                continue
            seen.add((source, question.id))
            questions.append(question)
    return questions, bad, count


# ----- prompts -> tensors -------------------------------------------------------------------------


def visual_count(item: Loaded, model: nn.Module, processor: Any) -> int | list[int]:
    """Placeholders of the item's medium, or (time markers) the ids of its video span."""
    if item.kind == "image":
        return model.image_tokens if item.image_size is None else model.num_image_tokens(*item.image_size)
    if getattr(processor, "time_markers", False):
        return processor.video_span(item.media.shape[0], _times(item))
    return model.video_tokens(item.media.shape[0])


def _times(item: Loaded) -> list[float]:
    if not item.times or len(item.times) != item.media.shape[0]:
        raise ValueError(f"question {item.question.id!r}: the time prompt needs each frame's time; the medium gives "
                         f"{len(item.times or [])} times for {item.media.shape[0]} frames")
    return item.times


def with_time_instruction(text: str, item: Loaded, processor: Any) -> str:
    """`text` with LLaVA-Video's time sentence after the video placeholder when the processor asks for it."""
    if item.kind == "image" or not getattr(processor, "time_instruction", False):
        return text
    token = processor.video_token
    return text.replace(token, f"{token}\n{time_instruction(item.duration, _times(item))}", 1)


def _token_id(item: Loaded, processor: Any) -> int:
    return processor.image_token_id if item.kind == "image" else processor.video_token_id


def _media_inputs(items: Sequence[Loaded], features: dict[int, torch.Tensor], device: torch.device) -> dict[str, Any]:
    """`VisionLanguageModel` media arguments for sequences in `items`' order (one medium each)."""
    out: dict[str, Any] = {}
    images = [item for item in items if item.kind == "image"]
    if images and images[0].image_size is not None:
        out["pixel_values"] = [item.media.to(device) for item in images]  # I x (P_i, 3, S, S)
        out["image_sizes"] = torch.tensor([item.image_size for item in images], dtype=torch.long)  # (I, 2)
    elif images:
        out["pixel_values"] = torch.cat([item.media for item in images]).to(device)  # (I, 3, S, S)
    videos = [features[id(item)] for item in items if item.kind != "image"]
    if videos:
        out["video_features"] = videos  # V x (T, N', D_v)
    return out


def pooled_features(items: Sequence[Loaded], model: nn.Module) -> dict[int, torch.Tensor]:
    """Pooled tower tokens of each video item, the tower run once over all raw videos."""
    device = model.tower.device
    raw = [item for item in items if item.kind == "video"]
    out = {id(item): item.media.to(device) for item in items if item.kind == "video_features"}
    by_stride: dict[int, list[Loaded]] = {}  # the stride the model's token budget gives each frame count
    for item in raw:
        by_stride.setdefault(model.video_layout.stride_for(item.media.shape[0]), []).append(item)
    for stride, group in by_stride.items():
        pooled = encode_videos(model.tower, [item.media.to(device) for item in group], stride=stride,
                               mode=model.pool_mode)  # V x (T, N', D_v)
        out.update({id(item): p for item, p in zip(group, pooled)})
    return out


def _left_pad(sequences: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)  # (B, L)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)  # (B, L)
    for row, s in enumerate(sequences):
        ids[row, length - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[row, length - len(s):] = 1
    return ids, mask


def stop_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    """The token ids that end a generated answer: the LLM's configured end tokens and the tokenizer's."""
    configured = getattr(getattr(model.llm, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    return sorted({i for i in ids + [tokenizer.eos_token_id] if i is not None})


def prompt_ids(model: nn.Module, processor: Any, item: Loaded) -> list[int]:
    """The generation prompt of a loaded question (a letter request for multiple choice), placeholders expanded."""
    prompt = choice_prompt(item.question) if item.question.multiple_choice else open_prompt(item.question)
    text = processor.apply_chat_template([{"role": "user", "content": with_time_instruction(prompt, item, processor)}],
                                         add_generation_prompt=True)
    ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    return expand_placeholder(ids, ids, _token_id(item, processor), [visual_count(item, model, processor)])[0]


def prompt_token_counts(ids: Sequence[int], item: Loaded, processor: Any) -> dict[str, int]:
    """{"text", "visual"}: the prompt's placeholder tokens (visual) and all the others (text, time markers too)."""
    visual = sum(1 for t in ids if t == _token_id(item, processor))
    return {"text": len(ids) - visual, "visual": visual}


@torch.no_grad()
def generate_answers(model: nn.Module, processor: Any, items: Sequence[Loaded], features: dict[int, torch.Tensor],
                     max_new_tokens: int, prompts: Sequence[list[int]] | None = None) -> list[str]:
    """Greedy answers to each item's prompt (`prompt_ids`, or `prompts` when given), batched, left-padded."""
    tokenizer, device = processor.tokenizer, model.tower.device
    sequences = list(prompts) if prompts is not None else [prompt_ids(model, processor, item) for item in items]
    input_ids, mask = _left_pad(sequences, padding_id(tokenizer))  # (B, L)
    stop = stop_ids(model, tokenizer)
    out = model.generate(input_ids.to(device), mask.to(device), **_media_inputs(items, features, device),
                         max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=padding_id(tokenizer),
                         eos_token_id=stop, use_cache=True)  # (B, L + new); training turns the cache off
    answers = []
    for row in out[:, input_ids.shape[1]:].tolist():
        end = next((j for j, t in enumerate(row) if t in stop), len(row))
        answers.append(tokenizer.decode(row[:end], skip_special_tokens=True).strip())
    return answers


@torch.no_grad()
def sequence_logprobs(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """Summed log-probability of each row's labelled tokens: float[B].

    The LM head runs only at positions followed by a label in some row (`logits_to_keep`), not over
    the thousands of visual positions, when the LLM supports it.
    """
    labels = batch.pop("labels")  # (B, L)
    targets = labels[:, 1:]  # (B, L-1): position j predicts token j+1
    keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)  # (K,)
    if takes_logits_to_keep(model.llm):
        logits = model(**batch, logits_to_keep=keep.to(labels.device)).logits  # (B, K, V)
    else:
        logits = model(**batch).logits[:, keep]  # (B, K, V)
    logp = torch.log_softmax(logits.float(), dim=-1)  # (B, K, V)
    picked = targets[:, keep]  # (B, K)
    gathered = logp.gather(2, picked.clamp(min=0)[..., None]).squeeze(2)  # (B, K)
    return (gathered * (picked != IGNORE_INDEX)).sum(dim=1)  # (B,)


def option_scores(model: nn.Module, processor: Any, items: Sequence[Loaded], features: dict[int, torch.Tensor],
                  batch_size: int) -> list[list[float]]:
    """Per multiple-choice item, the log-likelihood of each option as the answer to the open question.

    All options of all items are scored together, `batch_size` sequences per forward pass.
    """
    tokenizer, device = processor.tokenizer, model.tower.device
    pad_id = padding_id(tokenizer)
    sequences: list[tuple[Loaded, Example]] = []
    for item in items:
        for option in item.question.options:
            messages = [{"role": "user", "content": with_time_instruction(open_prompt(item.question), item, processor)},
                        {"role": "assistant", "content": option}]
            ids, labels = tokenize_conversation(tokenizer, messages)
            ids, labels = expand_placeholder(ids, labels, _token_id(item, processor),
                                             [visual_count(item, model, processor)])
            sequences.append((item, Example(item.question.id, torch.tensor(ids), torch.tensor(labels), None, None)))
    scores: list[float] = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        batch = {k: v.to(device) for k, v in pad_batch([e for _, e in chunk], pad_id).items()}  # (B, L) each
        batch.update(_media_inputs([item for item, _ in chunk], features, device))
        scores += sequence_logprobs(model, batch).tolist()
    out, at = [], 0
    for item in items:
        n = len(item.question.options)
        out.append(scores[at:at + n])
        at += n
    return out


# ----- rows ---------------------------------------------------------------------------------------


def _seen(item: Loaded, tokens: dict[str, int] | None) -> dict[str, Any]:
    """What the model was shown: the medium, the frames (index and presentation time) and the prompt's tokens."""
    q = item.question
    out: dict[str, Any] = {"media": str(q.media_path)}
    if q.start is not None or q.end is not None:
        out["window"] = [q.start, q.end]
    if item.kind != "image":
        out["frames"] = {"indices": item.indices, "times": [round(t, 4) for t in item.times or []]}
    if tokens is not None:
        out["tokens"] = tokens
    return out


def _row(item: Loaded, generated: str | None = None, scores: list[float] | None = None,
         tokens: dict[str, int] | None = None) -> dict[str, Any]:
    """The prediction line of one question (see `vlm_vision.evaluation.run` for the file)."""
    q = item.question
    row: dict[str, Any] = {"id": q.id, "source": q.source, "category": q.category, "duration": item.duration}
    if item.error is not None:
        return {**row, "error": item.error, "media": str(q.media_path)}
    row.update(_seen(item, tokens))
    if q.multiple_choice:
        picked = parse_choice(generated, q.options)
        best = max(range(len(scores)), key=scores.__getitem__)
        return {**row, "type": "multiple_choice", "question": q.question, "options": list(q.options),
                "answer": LETTERS[q.answer],
                "prediction": {"generated": generated, "generated_choice": None if picked is None else LETTERS[picked],
                               "log_likelihood_choice": LETTERS[best]},
                "correct": {"generated": picked == q.answer, "log_likelihood": best == q.answer},
                "scores": {"log_likelihood": [round(s, 4) for s in scores]}}
    em, f1 = exact_match(generated, q.references), token_f1(generated, q.references)
    return {**row, "type": "open_ended", "question": q.question, "answer": list(q.references), "prediction": generated,
            "correct": em, "scores": {"exact_match": float(em), "token_f1": round(f1, 4)}}


def answer_batch(model: nn.Module, processor: Any, items: Sequence[Loaded], *, max_new_tokens: int,
                 batch_size: int) -> list[dict[str, Any]]:
    """Answer and score loaded questions; items with a load error become error rows."""
    ready = [item for item in items if item.error is None]
    answers, scores, tokens = {}, {}, {}
    if ready:
        features = pooled_features(ready, model)
        prompts = [prompt_ids(model, processor, item) for item in ready]
        tokens = {id(item): prompt_token_counts(p, item, processor) for item, p in zip(ready, prompts)}
        answers = dict(zip(map(id, ready), generate_answers(model, processor, ready, features, max_new_tokens,
                                                            prompts)))
        choice = [item for item in ready if item.question.multiple_choice]
        if choice:
            scores = dict(zip(map(id, choice), option_scores(model, processor, choice, features, batch_size)))
    return [_row(item, answers.get(id(item)), scores.get(id(item)), tokens.get(id(item))) for item in items]


def answer_questions(model: nn.Module, processor: Any, questions: Sequence[Question], *, num_frames: int,
                     batch_size: int = 8, max_new_tokens: int = 32, num_workers: int = 0,
                     on_rows: Callable[[list[dict[str, Any]]], None] | None = None,
                     sampling: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Answer every question, `batch_size` at a time, media decoded ahead by `num_workers` processes.

    Args:
        model: a `VisionLanguageModel` in eval mode.
        processor: its `VisionLanguageProcessor`.
        questions: parsed questions (`vlm_vision.evaluation.questions.parse_question`).
        num_frames: frames sampled from each raw video.
        on_rows: called with each batch's rows as soon as they exist (to write them out).
        sampling: `video.load_video` frame arguments instead of `num_frames` (fps, min/max frames).

    Returns:
        One row per question, in order: the prediction, whether it is correct, and its scores; or
        `error` with the reason when the medium could not be read.
    """
    was_training = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(QuestionMedia(questions, model, num_frames, sampling), batch_size=batch_size,
                                         num_workers=num_workers, collate_fn=list)
    rows: list[dict[str, Any]] = []
    try:
        for items in loader:
            batch_rows = answer_batch(model, processor, items, max_new_tokens=max_new_tokens, batch_size=batch_size)
            rows += batch_rows
            if on_rows is not None:
                on_rows(batch_rows)
    finally:
        model.train(was_training)
    return rows


# ----- during training ----------------------------------------------------------------------------


def eval_questions(config: Any, log: Any) -> list[Question]:
    """The questions of a `TrainConfig`'s `eval_data` (for `eval_accuracy`); bad records go to the run's log.

    Raises:
        ValueError: when no record of `eval_data` is a question.
    """
    questions, bad, records = read_questions([config.eval_data], config.media_root)
    if bad:
        log.skipped([Skipped(b["id"], b["reason"], b["source"]) for b in bad], "eval_accuracy questions")
    if not questions:
        raise ValueError(f"eval_accuracy: none of the {records} records of {config.eval_data} is a question "
                         f"(first reasons: {[b['reason'] for b in bad[:3]]})")
    return questions


def question_accuracy(model: nn.Module, processor: Any, questions: Sequence[Question], accelerator: Any, *,
                      num_frames: int, batch_size: int) -> dict[str, float]:
    """Accuracy on `questions` as log fields (`eval_mc_generated_accuracy`, ...), each process
    answering every Nth question under the run's autocast."""
    from accelerate.utils import gather_object  # lazy: only training's periodic evaluation gathers rows

    mine = list(questions[accelerator.process_index::accelerator.num_processes])
    with accelerator.autocast():
        rows = answer_questions(model, processor, mine, num_frames=num_frames, batch_size=batch_size)
    if accelerator.num_processes > 1:
        rows = gather_object(rows)
    return log_fields(rows)
