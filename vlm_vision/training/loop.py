"""Training: stage 1 fits the projector, stage 2 adds LoRA on the LLM; the tower never trains.

LLaVA-1.5's two-stage recipe (`vlm_vision.training.config`). The loop is plain: setup -> for each
optimizer step, `grad_accum` micro-batches -> save. Each piece has its own module:

    train_config      TrainConfig: every setting, its default and its docstring (the CLI's flags)
    train_setup       the model, LoRA, what trains, the datasets
    train_params      what trains, AdamW groups, the learning-rate schedule
    train_order       which samples each process reads at each micro-batch; bad samples replaced
    train_loss        padded model inputs, the labelled loss, evaluation
    train_log         log.jsonl, skipped.jsonl, loss.png
    train_checkpoint  checkpoint-STEP/ save, prune, resume
    train_runtime     accelerate's Accelerator for a config, and its release
    train_sharded     FSDP, and gathering sharded weights whole to save them
    evaluation        answering the eval_data questions (`eval_accuracy`), as `vlm-vision eval` does

Why resuming is exact: the data order is a pure function of (seed, epoch), so the position is
just the number of micro-batches consumed; a checkpoint stores the trainable weights, the
optimizer, the scheduler and every process's RNG state, and the data loader draws no numbers from
the global RNG. A resumed run then replays the same batches with the same dropout masks as an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object, set_seed
from tqdm.auto import tqdm

from video.atomic_files import atomic_dir
from vlm_vision.errors import InputError
from vlm_vision.model.llm import padding_id
from vlm_vision.evaluation.answers import eval_questions, question_accuracy
from vlm_vision.training.checkpoint import latest_checkpoint, read_state, save_checkpoint
from vlm_vision.training.config import TrainConfig
from vlm_vision.training.log import RunLog, plot_loss
from vlm_vision.training.loss import evaluate, label_count, labelled_loss, model_inputs, step_loss_scale, to_device
from vlm_vision.training.order import micro_batch_loader
from vlm_vision.training.params import cosine_schedule, param_groups, print_trainable
from vlm_vision.training.runtime import (
    deepspeed_kwargs,
    make_accelerator,
    release_accelerator_state,
    resolve_device_defaults,
    run_device,
)
from vlm_vision.training.setup import setup
from vlm_vision.training.sharded import frozen_parts, load_optimizer_state, shard_model, whole_state
from vlm_vision.model.run_folder import load_trained_weights, save_trained

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
    accelerator = make_accelerator(config)
    try:
        return _train(config, accelerator, runtime)
    finally:  # also after an error, so that a later call in this process may choose other settings
        release_accelerator_state()


def _train(config: TrainConfig, accelerator: Any, runtime: str) -> Path:
    main = accelerator.is_main_process
    if main:
        print(runtime)
    out = Path(config.output_dir)
    log = RunLog(out, enabled=main)
    checkpoint = latest_checkpoint(out) if config.resume else None
    # Every process checks (and raises), so none is left waiting for the others.
    if not config.resume and (log.path.exists() or latest_checkpoint(out) is not None):
        raise InputError("already holds a run (log.jsonl or checkpoints)", f"--output-dir {out}", "a new folder; "
                         "pass resume=True (--resume) to continue the run in it, or choose another output_dir")
    if main:
        out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()

    # ----- setup
    set_seed(config.seed)
    run = setup(config, log, main)  # config already resolved for the accelerator's device
    config = run.config  # max_length resolved
    model = run.model
    if main:
        print_trainable(model, run.trainable)
    step, position = 0, 0
    if checkpoint is not None:  # weights first: FSDP and ZeRO-3 split them
        step, position = read_state(checkpoint, config)
        load_trained_weights(model, checkpoint, run.spec)
    frozen = frozen_parts(model, run.spec)
    sharded = config.fsdp and accelerator.num_processes > 1
    if sharded:
        shard_model(model, accelerator.device)
    elif config.fsdp and main:
        print("fsdp: one process, nothing to shard; training unsharded")
    optimizer = torch.optim.AdamW(param_groups(model, config), betas=(0.9, 0.999))
    scheduler = cosine_schedule(optimizer, config.max_steps, config.warmup_ratio)
    loader = micro_batch_loader(run.dataset, start=position, batch_size=config.batch_size,
                                num_processes=accelerator.num_processes, seed=config.seed,
                                num_workers=config.num_workers,
                                **({"lengths": run.lengths, "modalities": run.kinds}
                                   if config.group_by_modality_length else {}))
    # A model accelerate prepares runs its forward under autocast; the FSDP model is not prepared.
    autocast = accelerator.autocast if sharded else contextlib.nullcontext
    if sharded:  # accelerate would save the optimizer's local shards only; `save_checkpoint` gathers it
        loader = accelerator.prepare(loader)
    else:
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    accelerator.register_for_checkpointing(scheduler)
    # Checkpoints hold only the trainable weights (written by `save_trained`), not the whole model.
    accelerator.register_save_state_pre_hook(lambda models, weights, output_dir: weights.clear())
    accelerator.register_load_state_pre_hook(lambda models, input_dir: models.clear())
    unwrapped = accelerator.unwrap_model(model)

    if checkpoint is not None:
        # DeepSpeed's checkpoint holds the trainable weights only (`save_checkpoint`).
        accelerator.load_state(str(checkpoint), **deepspeed_kwargs(accelerator, load_module_strict=False))
        if sharded:
            load_optimizer_state(model, optimizer, checkpoint)
        log.truncate(step)
        run.skip_ceiling.add(log.skips_until(step), f"the {step} steps before the resume")
        if main:
            print(f"resumed from {checkpoint} at step {step}")
    elif config.resume and main:
        print(f"no checkpoint in {out}; starting from step 0")

    pad_id = padding_id(run.processor.tokenizer)
    batches = iter(loader)
    params = [p for p in model.parameters() if p.requires_grad]
    placeholders = unwrapped.placeholder_ids()

    questions = eval_questions(config, log) if config.eval_accuracy else []

    def run_eval() -> None:
        if run.eval_dataset is None:
            return
        eval_loss = evaluate(unwrapped, run.eval_dataset, accelerator, config.batch_size, pad_id,
                             config.pool_stride, config.pool_mode)
        entry = {"step": step, "eval_loss": eval_loss}
        if questions:
            entry.update(question_accuracy(unwrapped, run.processor, questions, accelerator,
                                           num_frames=config.num_frames, batch_size=config.batch_size))
        log.write(entry)
        if main:
            print(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in entry.items() if k != "step"))

    # ----- loop
    bar = tqdm(total=config.max_steps, initial=step, disable=not (main and config.progress), desc="train")
    model.train()
    while step < config.max_steps:
        started = time.perf_counter()
        micro = [next(batches) for _ in range(config.grad_accum)]  # the step's (examples, skipped)
        position += config.grad_accum
        # Token weighting: the step's loss is its summed cross-entropy over the labelled tokens of
        # every micro-batch on every process, divided by their number (counted first, all reduced).
        counts = torch.tensor([label_count(examples, placeholders) for examples, _ in micro], dtype=torch.float64)
        step_tokens = int(accelerator.reduce(counts.sum().to(accelerator.device), reduction="sum"))
        scale = step_loss_scale(step_tokens, accelerator.num_processes, config.grad_accum)
        loss_sum, tokens = torch.zeros((), device=accelerator.device), torch.zeros((), device=accelerator.device)
        for examples, skipped in micro:
            if skipped:
                log.skipped(skipped, f"step {step + 1}")
            # every process counts everyone's skips, so that all of them stop at the same step
            everyone = gather_object(skipped) if accelerator.num_processes > 1 else skipped
            run.skip_ceiling.add(everyone, f"step {step + 1}")
            batch = to_device(model_inputs(examples, pad_id, unwrapped.tower, pool_stride=config.pool_stride,
                                           pool_mode=config.pool_mode, stride_for=unwrapped.video_layout.stride_for),
                              accelerator.device)
            with accelerator.accumulate(model):
                with autocast():
                    summed = labelled_loss(model, batch, reduction="sum")
                accelerator.backward(summed * scale)
            loss_sum += summed.detach().float()
            tokens += batch["attention_mask"].sum()
        if config.max_grad_norm:
            accelerator.clip_grad_norm_(params, config.max_grad_norm)
        lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}  # the rates this step uses
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        step_loss = float(accelerator.reduce(loss_sum, reduction="sum")) / max(step_tokens, 1)
        tokens_per_s = float(accelerator.reduce(tokens, reduction="sum")) / (time.perf_counter() - started)
        lr = lrs.get("lora", lrs.get("projector", next(iter(lrs.values()))))
        log.write({"step": step, "loss": step_loss, "lr": lr, "projector_lr": lrs.get("projector", lr),
                   "tokens_per_s": round(tokens_per_s, 1)})
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tokens_per_s:.0f}")
        if config.eval_every and step % config.eval_every == 0 and step < config.max_steps:
            run_eval()
        if config.save_every and step % config.save_every == 0:
            save_checkpoint(accelerator, unwrapped, run.processor, run.spec, config, out, step, position,
                            frozen=frozen, optimizer=optimizer if sharded else None)
    bar.close()

    # ----- save
    final = out / "final"
    state = whole_state(unwrapped, frozen)  # every process takes part in gathering sharded weights
    if main:
        with atomic_dir(final) as tmp:
            save_trained(unwrapped, run.processor, run.spec, tmp, state=state, rows=frozen.rows)
    accelerator.wait_for_everyone()
    run_eval()
    if main:
        plot_loss(log.entries(), out / "loss.png")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return final

