"""Training: stage 1 fits the projector, stage 2 adds LoRA on the LLM; the tower never trains.

LLaVA-1.5's two-stage recipe (`vlm_vision.training.config`), run by the one training loop
(`vlm_vision.training.fit`, which `vlm-vision clip-train` runs too). This module is the stage's job:
what trains, its data, how a micro-batch's loss is counted, what a checkpoint and `final/` hold.
The loop does the rest (setup -> for each optimizer step, `grad_accum` micro-batches -> save).
Each piece has its own module:

    config      TrainConfig: every setting, its default and its docstring (the CLI's flags)
    setup       the model, LoRA, what trains, the datasets
    params      what trains, AdamW groups, the learning-rate schedule
    order       which samples each process reads at each micro-batch; bad samples replaced
    loss        padded model inputs, the labelled loss, evaluation
    fit         the loop: accelerate, accumulation, skips, log, progress, checkpoints, resume
    log         log.jsonl, skipped.jsonl, loss.png
    checkpoint  checkpoint-STEP/ save, prune, resume
    runtime     accelerate's Accelerator for a run, and its release
    sharded     FSDP, and gathering sharded weights whole to save them
    vlm_vision.evaluation.answers  answering the eval_data questions (`eval_accuracy`), as `vlm-vision eval` does

Why resuming is exact: the data order is a pure function of (seed, epoch), so the position is
just the number of micro-batches consumed; a checkpoint stores the trainable weights, the
optimizer, the scheduler and every process's RNG state, and the data loader draws no numbers from
the global RNG. A resumed run then replays the same batches with the same dropout masks as an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from video.atomic_files import atomic_dir
from vlm_vision.evaluation.answers import eval_questions, question_accuracy
from vlm_vision.evaluation.questions import Question
from vlm_vision.model.llm import padding_id
from vlm_vision.model.run_folder import load_trained_weights, save_trained
from vlm_vision.training.config import RESUMABLE_CHANGES, TrainConfig, config_dict
from vlm_vision.training.fit import FitSettings, Fitted, Job, MicroBatch, fit
from vlm_vision.training.log import RunLog, plot_loss
from vlm_vision.training.loss import evaluate, label_count, labelled_loss, model_inputs, to_device
from vlm_vision.training.order import micro_batch_loader
from vlm_vision.training.params import cosine_schedule, param_groups, print_trainable
from vlm_vision.training.runtime import resolve_device_defaults, run_device
from vlm_vision.training.setup import Run, setup
from vlm_vision.training.sharded import FrozenParts, frozen_parts, shard_model, whole_state

__all__ = ["train"]


def train(config: TrainConfig) -> Path:
    """Run one training stage and return its `final/` folder.

    Writes into `config.output_dir`: `log.jsonl`, `skipped.jsonl`, `checkpoint-STEP/` every
    `save_every` steps (the last `keep_last` kept), `final/` (see `vlm_vision.model.run_folder`) and
    `loss.png`. Launch on several GPUs or machines with `accelerate launch`.

    Raises:
        ValueError: for an output folder that already holds a run (without `resume`), a resume with
            changed settings, or data with no usable sample.
        vlm_vision.training.provenance.ForeignTokens: cached token files made by other weights or
            settings (unless `accept_foreign_tokens`).
        vlm_vision.training.skips.TooManySkipped: more than `max_skip_fraction` of the training samples
            skipped (at the scan or during training).
    """
    # The device first, then the settings that follow it, then the accelerator they configure.
    config, runtime = resolve_device_defaults(config, run_device())
    settings = FitSettings(
        output_dir=Path(config.output_dir), max_steps=config.max_steps, seed=config.seed,
        mixed_precision=config.mixed_precision, grad_accum=config.grad_accum, max_grad_norm=config.max_grad_norm,
        save_every=config.save_every, keep_last=config.keep_last, eval_every=config.eval_every,
        resume=config.resume, resumable=frozenset(RESUMABLE_CHANGES), fsdp=config.fsdp,
        unused_parameters=True,  # text-only batches leave the projector without a gradient
        progress=config.progress, name="train",
        shown=(("loss", "loss", ".4f"), ("lr", "lr", ".2e"), ("tok_s", "tokens_per_s", ".0f")))
    return fit(settings, functools.partial(_job, config, runtime))


@dataclasses.dataclass(frozen=True)
class _Stage:
    """What the stage's job functions share: the run `setup` built, the accelerator and the log."""

    run: Run
    accelerator: Any
    log: RunLog
    frozen: FrozenParts
    """What `final/` holds that does not train, copied before sharding (it never changes)."""
    questions: list[Question]
    """The eval_data questions answered at each evaluation (`eval_accuracy`), else []."""
    pad_id: int


def _job(config: TrainConfig, runtime: str, accelerator: Any, log: RunLog) -> Job[Path]:
    """The stage's model, data, loss and saving, for `fit` (which calls it once accelerate is set up)."""
    main = accelerator.is_main_process
    if main:
        print(runtime)
    run = setup(config, log, main)  # config already resolved for the accelerator's device
    model, config = run.model, run.config  # max_length resolved
    if main:
        print_trainable(model, run.trainable)
    # Copied now, before a resume loads its weights: a checkpoint holds the same never-trained values.
    frozen = frozen_parts(model, run.spec)
    questions = eval_questions(config, log) if config.eval_accuracy else []
    stage = _Stage(run, accelerator, log, frozen, questions, padding_id(run.processor.tokenizer))
    return Job(
        model=model, settings=config_dict(config), skip_ceiling=run.skip_ceiling,
        load_weights=lambda folder: load_trained_weights(model, folder, run.spec),
        save_weights=functools.partial(_save_weights, stage),
        optimizer=functools.partial(_optimizer, model, config),
        loader=functools.partial(_loader, run, accelerator.num_processes),
        micro_batches=functools.partial(_micro_batches, placeholders=model.placeholder_ids()),
        loss=functools.partial(_loss, stage),
        entry=functools.partial(_entry, accelerator),
        finish=functools.partial(_finish, stage),
        evaluate=functools.partial(_evaluate, stage),
        shard=functools.partial(shard_model, model))


def _optimizer(model: nn.Module, config: TrainConfig) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over the trainable groups (`param_groups`), and the warmup-then-cosine schedule."""
    optimizer = torch.optim.AdamW(param_groups(model, config), betas=(0.9, 0.999))
    return optimizer, cosine_schedule(optimizer, config.max_steps, config.warmup_ratio)


def _loader(run: Run, num_processes: int, position: int) -> torch.utils.data.DataLoader:
    """Every process's (examples, skipped) micro-batches from micro-batch `position` on (`micro_batch_loader`)."""
    config = run.config
    return micro_batch_loader(run.dataset, start=position, batch_size=config.batch_size, num_processes=num_processes,
                              seed=config.seed, num_workers=config.num_workers,
                              **({"lengths": run.lengths, "modalities": run.kinds}
                                 if config.group_by_modality_length else {}))


def _micro_batches(loader: Iterable[Any], position: int, placeholders: list[int]) -> Iterator[MicroBatch]:
    """The prepared loader's micro-batches (it starts at `position` itself), each weighed by its labelled
    tokens: the step's loss is the mean over every labelled token of the step."""
    for examples, skipped in loader:
        yield MicroBatch(examples, skipped, len(examples), label_count(examples, placeholders))


def _loss(stage: _Stage, model: nn.Module, examples: list[Any],
          autocast: Callable[[], Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """The micro-batch's cross-entropy summed over its labelled tokens, and its tokens (for tokens_per_s)."""
    config, parts = stage.run.config, stage.run.model  # the unwrapped model: its tower and video layout
    batch = to_device(model_inputs(examples, stage.pad_id, parts.tower, pool_stride=config.pool_stride,
                                   pool_mode=config.pool_mode, stride_for=parts.video_layout.stride_for),
                      stage.accelerator.device)
    with autocast():
        summed = labelled_loss(model, batch, reduction="sum")
    return summed, {"tokens": batch["attention_mask"].sum()}


def _entry(accelerator: Any, values: list[dict[str, Any]], lrs: dict[str, float], seconds: float) -> dict[str, Any]:
    """log.jsonl's `lr` (LoRA's in stage 2, else the projector's), `projector_lr` and `tokens_per_s`."""
    tokens = sum((v["tokens"] for v in values), torch.zeros((), device=accelerator.device))
    tokens_per_s = float(accelerator.reduce(tokens, reduction="sum")) / seconds
    lr = lrs.get("lora", lrs.get("projector", next(iter(lrs.values()))))
    return {"lr": lr, "projector_lr": lrs.get("projector", lr), "tokens_per_s": round(tokens_per_s, 1)}


def _save_weights(stage: _Stage, folder: Path) -> None:
    """A checkpoint's trainable weights, in `final/`'s files (`save_trained`). Collective."""
    run = stage.run
    state = whole_state(run.model, stage.frozen)  # every process takes part in gathering sharded weights
    if stage.accelerator.is_main_process:
        save_trained(run.model, run.processor, run.spec, folder, state=state, rows=stage.frozen.rows)


def _evaluate(stage: _Stage, step: int) -> None:
    """Log (and print) `eval_loss` on eval_data and, with `eval_accuracy`, the questions' accuracy."""
    run, config, accelerator = stage.run, stage.run.config, stage.accelerator
    if run.eval_dataset is None:
        return
    eval_loss = evaluate(run.model, run.eval_dataset, accelerator, config.batch_size, stage.pad_id,
                         config.pool_stride, config.pool_mode)
    entry = {"step": step, "eval_loss": eval_loss}
    if stage.questions:
        entry.update(question_accuracy(run.model, run.processor, stage.questions, accelerator,
                                       num_frames=config.num_frames, batch_size=config.batch_size))
    stage.log.write(entry)
    if accelerator.is_main_process:
        print(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in entry.items() if k != "step"))


def _finish(stage: _Stage, fitted: Fitted) -> Path:
    """Write `final/` (atomically), evaluate, draw `loss.png`; returns `final/`."""
    run, accelerator = stage.run, stage.accelerator
    out = Path(run.config.output_dir)
    final = out / "final"
    state = whole_state(fitted.model, stage.frozen)  # every process takes part in gathering sharded weights
    if accelerator.is_main_process:
        with atomic_dir(final) as tmp:
            save_trained(fitted.model, run.processor, run.spec, tmp, state=state, rows=stage.frozen.rows)
    accelerator.wait_for_everyone()
    _evaluate(stage, fitted.step)
    if accelerator.is_main_process:
        plot_loss(stage.log.entries(), out / "loss.png")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return final
