"""The one training loop: `vlm-vision train` and `vlm-vision clip-train` both run `fit`.

A command supplies its job and the loop's settings. The job (`Job`) is the model, the data, the
loss of a micro-batch, the fields it adds to `log.jsonl`, what a checkpoint holds of its weights,
and what the end of the run saves; the settings (`FitSettings`) are numbers and names. The loop owns
everything in between: accelerate's set-up and release (`vlm_vision.training.runtime`), the seed,
the output folder, gradient accumulation, the skip ceiling (`vlm_vision.training.skips`),
`log.jsonl` and `skipped.jsonl` (`vlm_vision.training.log`), the progress bar, evaluation every
`eval_every` steps, `checkpoint-STEP/` and resuming from it (`vlm_vision.training.checkpoint`), and
FSDP's different set-up (`vlm_vision.training.sharded`).

A step takes `grad_accum` usable micro-batches. A micro-batch whose samples all failed to load on
any process is skipped on every process (so their collective calls stay in step), and its samples
count against the skip ceiling. Each micro-batch has a weight: what its loss sums over (labelled
tokens for LLaVA's summed loss, 1 for CLIP's mean loss). The step's loss is the weighted mean over
every micro-batch of every process, what one batch holding them all would give (`step_loss_scale`).

Why resuming is exact: a checkpoint holds the trainable weights, the optimizer, the scheduler, every
process's RNG state, the step and the position (micro-batches consumed, skipped ones included). The
job's data starts again at that position without drawing from the global RNG, so a resumed run
replays the same batches with the same random draws as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Generic, NamedTuple, TypeVar

import torch
from accelerate import skip_first_batches
from accelerate.utils import gather_object, set_seed
from torch import nn
from tqdm.auto import tqdm

from vlm_vision.data.files import Skipped
from vlm_vision.errors import InputError
from vlm_vision.training.checkpoint import latest_checkpoint, read_state, save_checkpoint
from vlm_vision.training.log import RunLog
from vlm_vision.training.loss import step_loss_scale
from vlm_vision.training.runtime import deepspeed_kwargs, make_accelerator, release_accelerator_state
from vlm_vision.training.sharded import load_optimizer_state
from vlm_vision.training.skips import SkipCeiling

__all__ = ["FitSettings", "Fitted", "Job", "MicroBatch", "fit", "shuffled_batches"]

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class FitSettings:
    """How the loop runs a job; each command builds it from its own config."""

    output_dir: Path
    """log.jsonl, skipped.jsonl and checkpoint-STEP/ go here."""
    max_steps: int
    """Optimizer steps."""
    seed: int
    """Set for every RNG (`accelerate.utils.set_seed`) before the job is built."""
    mixed_precision: str = "no"
    """"no", "bf16" or "fp16": accelerate's autocast."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    max_grad_norm: float = 0.0
    """Clip the gradient norm of the trainable weights to this (0: no clipping)."""
    save_every: int = 0
    """Write checkpoint-STEP/ every N steps (0: never)."""
    keep_last: int = 2
    """Checkpoints kept; older ones are deleted."""
    eval_every: int = 0
    """Call `Job.evaluate` every N steps but the last, which the job's `finish` evaluates (0: never)."""
    resume: bool = False
    """Continue from the latest checkpoint-STEP/ in `output_dir`."""
    resumable: frozenset[str] = frozenset()
    """Keys of `Job.settings` that may change between a run and its resumption."""
    fsdp: bool = False
    """Shard the model (`Job.shard`) when there are several processes."""
    unused_parameters: bool = False
    """Some trainable parameters may get no gradient in a step: DDP must not wait for them."""
    replace_log: bool = False
    """A new run replaces an earlier run's log.jsonl and skipped.jsonl instead of refusing the folder (a
    folder holding checkpoints is refused either way)."""
    progress: bool = True
    """Show a progress bar (main process)."""
    name: str = "train"
    """The progress bar's label."""
    shown: tuple[tuple[str, str, str], ...] = (("loss", "loss", ".4f"),)
    """What the progress bar shows of each step's log entry: (label, field, format)."""
    skip_where: str = "step {step}"
    """Where the skip ceiling's error says that training skips happened (`{step}`: the step)."""


class MicroBatch(NamedTuple):
    """One process's micro-batch, as a job's `micro_batches` yields it."""

    data: Any
    """What `Job.loss` takes."""
    skipped: list[Skipped]
    """Samples this process skipped (they failed to load) while loading it."""
    size: int
    """Samples it holds; 0 (all failed) makes the step skip it on every process."""
    weight: float
    """What its loss sums over: labelled tokens for a summed loss, 1 for a mean loss."""
    epoch_end: bool = False
    """Whether it is the last micro-batch of an epoch (a whole epoch without a usable one is an error)."""


@dataclasses.dataclass(frozen=True)
class Fitted:
    """What the loop hands to `Job.finish` after the last step."""

    model: nn.Module
    """The trained model, unwrapped from accelerate."""
    step: int
    """Steps trained, those before a resume included."""
    losses: list[float]
    """Each step's logged loss (those before a resume read back from log.jsonl)."""
    skipped: list[Skipped]
    """The samples skipped during training before a resume (from skipped.jsonl); [] for a new run."""


@dataclasses.dataclass(frozen=True)
class Job(Generic[T]):
    """What a command trains: built by its `build(accelerator, log)` once accelerate is set up."""

    model: nn.Module
    """What trains (frozen parts inside it are fine), before accelerate wraps it."""
    settings: dict[str, Any]
    """The job's settings as JSON values: every checkpoint records them and a resume must match them."""
    skip_ceiling: SkipCeiling
    """Counts the training data's skipped samples (those found while building it already)."""
    load_weights: Callable[[Path], None]
    """Load a checkpoint folder's trainable weights into `model` (before it is sharded and wrapped)."""
    save_weights: Callable[[Path], None]
    """Write the trainable weights into a checkpoint folder. Every process calls it (sharded weights are
    gathered); the main process writes."""
    optimizer: Callable[[], tuple[torch.optim.Optimizer, Any]]
    """The optimizer and its learning-rate schedule, built once the weights are loaded and sharded."""
    loader: Callable[[int], torch.utils.data.DataLoader]
    """The training data loader of a run that starts at micro-batch `position` (accelerate prepares it)."""
    micro_batches: Callable[[Iterable[Any], int], Iterator[MicroBatch]]
    """The prepared loader's micro-batches from micro-batch `position` on, endlessly."""
    loss: Callable[[nn.Module, Any, Callable[[], Any]], tuple[torch.Tensor, dict[str, Any]]]
    """(model, micro-batch data, autocast) -> its loss summed over its weight, and values for `entry`."""
    entry: Callable[[list[dict[str, Any]], dict[str, float], float], dict[str, Any]]
    """(each micro-batch's values, the learning rate of each optimizer group by name, seconds) -> the
    fields of the step's log.jsonl line after "step" and "loss". Every process calls it."""
    finish: Callable[[Fitted], T]
    """Save (and evaluate) the trained model; `fit` returns what it returns."""
    evaluate: Callable[[int], None] | None = None
    """Evaluate at a step and log the result (every `FitSettings.eval_every` steps)."""
    shard: Callable[[torch.device], None] | None = None
    """Shard `model` in place over all processes (FSDP); None: the job cannot be sharded."""


def fit(settings: FitSettings, build: Callable[[Any, RunLog], Job[T]]) -> T:
    """Set up accelerate, build the job, train it for `settings.max_steps` steps, return its `finish`.

    Launch on several GPUs or machines with `accelerate launch` (or `torchrun`).

    Raises:
        InputError: for an output folder that already holds a run (without `resume`), or a resume
            with changed settings.
        vlm_vision.training.skips.TooManySkipped: more skipped samples than the job's ceiling allows.
        ValueError: when a whole epoch of the job's data holds no micro-batch usable on every process.
    """
    accelerator = make_accelerator(settings.mixed_precision, settings.grad_accum, max_grad_norm=settings.max_grad_norm,
                                   fsdp=settings.fsdp, unused_parameters=settings.unused_parameters)
    try:
        return _fit(settings, accelerator, build)
    finally:  # also after an error, so that a later call in this process may choose other settings
        release_accelerator_state()


def _fit(settings: FitSettings, accelerator: Any, build: Callable[[Any, RunLog], Job[T]]) -> T:
    main = accelerator.is_main_process
    out = settings.output_dir
    log = RunLog(out, enabled=main)
    checkpoint = _resume_from(settings, log)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if checkpoint is None and settings.replace_log:
            log.clear()
    accelerator.wait_for_everyone()

    # ----- setup
    set_seed(settings.seed)
    job = build(accelerator, log)
    step, position = 0, 0
    if checkpoint is not None:  # weights first: FSDP and ZeRO-3 split them
        step, position = read_state(checkpoint, job.settings, settings.resumable)
        job.load_weights(checkpoint)
    sharded = settings.fsdp and accelerator.num_processes > 1
    if sharded:
        if job.shard is None:
            raise ValueError(f"fsdp=True, but the {settings.name} job cannot be sharded")
        job.shard(accelerator.device)
    elif settings.fsdp and main:
        print("fsdp: one process, nothing to shard; training unsharded")
    optimizer, scheduler = job.optimizer()
    loader = job.loader(position)
    # A model accelerate prepares runs its forward under autocast; the FSDP model is not prepared.
    autocast = accelerator.autocast if sharded else contextlib.nullcontext
    model = job.model
    if sharded:  # accelerate would save the optimizer's local shards only; `save_checkpoint` gathers it
        loader = accelerator.prepare(loader)
    else:
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    accelerator.register_for_checkpointing(scheduler)
    # Checkpoints hold only the trainable weights (written by `job.save_weights`), not the whole model.
    accelerator.register_save_state_pre_hook(lambda models, weights, output_dir: weights.clear())
    accelerator.register_load_state_pre_hook(lambda models, input_dir: models.clear())

    losses: list[float] = []
    earlier: list[Skipped] = []
    if checkpoint is not None:
        # DeepSpeed's checkpoint holds the trainable weights only (`save_checkpoint`).
        accelerator.load_state(str(checkpoint), **deepspeed_kwargs(accelerator, load_module_strict=False))
        if sharded:
            load_optimizer_state(model, optimizer, checkpoint)
        losses = [e["loss"] for e in log.entries() if "loss" in e and e["step"] <= step]
        log.truncate(step)
        earlier = log.skips_until(step)
        job.skip_ceiling.add(earlier, f"the {step} steps before the resume")
        if main:
            print(f"resumed from {checkpoint} at step {step}")
    elif settings.resume and main:
        print(f"no checkpoint in {out}; starting from step 0")

    batches = job.micro_batches(loader, position)
    params = [p for p in model.parameters() if p.requires_grad]
    used = position > 0  # whether this epoch gave a step already (a checkpoint follows a step)

    # ----- loop
    bar = tqdm(total=settings.max_steps, initial=step, disable=not (main and settings.progress), desc=settings.name)
    model.train()
    while step < settings.max_steps:
        started = time.perf_counter()
        micro: list[MicroBatch] = []
        while len(micro) < settings.grad_accum:
            drawn = next(batches)
            position += 1
            if _usable(drawn, accelerator, log, job.skip_ceiling, step + 1, settings.skip_where):
                micro.append(drawn)
                used = True
            if drawn.epoch_end:
                if not used:
                    raise ValueError(_empty_epoch(job.skip_ceiling))
                used = False
        # The step's loss is the micro-batches' summed losses over their summed weight, on every
        # process (counted first, all reduced), as one batch holding them all would give.
        weights = torch.tensor([m.weight for m in micro], dtype=torch.float64)
        step_weight = int(accelerator.reduce(weights.sum().to(accelerator.device), reduction="sum"))
        scale = step_loss_scale(step_weight, accelerator.num_processes, settings.grad_accum)
        loss_sum = torch.zeros((), device=accelerator.device)
        values = []
        for m in micro:
            with accelerator.accumulate(model):
                loss, value = job.loss(model, m.data, autocast)
                accelerator.backward(loss * scale)
            loss_sum += loss.detach().float()
            values.append(value)
        if settings.max_grad_norm:
            accelerator.clip_grad_norm_(params, settings.max_grad_norm)
        lrs = {str(g.get("name", i)): g["lr"] for i, g in enumerate(optimizer.param_groups)}  # this step's rates
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        step_loss = float(accelerator.reduce(loss_sum, reduction="sum")) / max(step_weight, 1)
        entry = {"step": step, "loss": step_loss, **job.entry(values, lrs, time.perf_counter() - started)}
        log.write(entry)
        losses.append(step_loss)
        bar.update(1)
        bar.set_postfix({label: format(entry[field], spec) for label, field, spec in settings.shown})
        if settings.eval_every and job.evaluate and step % settings.eval_every == 0 and step < settings.max_steps:
            job.evaluate(step)
        if settings.save_every and step % settings.save_every == 0:
            save_checkpoint(accelerator, out, step, position, settings=job.settings, keep_last=settings.keep_last,
                            save_weights=job.save_weights, optimizer=(model, optimizer) if sharded else None)
    bar.close()
    return job.finish(Fitted(accelerator.unwrap_model(model), step, losses, earlier))


def shuffled_batches(loader: Any, position: int) -> Iterator[tuple[Any, bool]]:
    """A prepared, shuffled loader's batches from batch `position` on, epoch after epoch, each with
    whether it ends its epoch.

    For a loader that shuffles with a generator of its own (`DataLoader(shuffle=True, generator=...)`):
    a resumed run replays the shuffles of the epochs before its position, then skips the batches of
    its epoch up to it, loading none of them (accelerate's `skip_first_batches`). The generator then
    draws what it drew in the uninterrupted run, and the same batches follow.
    """
    per_epoch = len(loader)
    epochs, start = divmod(position, per_epoch)
    for _ in range(epochs):
        for _ in skip_first_batches(loader, per_epoch):  # every batch skipped: nothing is loaded
            pass
    epoch = skip_first_batches(loader, start) if start else loader
    while True:
        for k, batch in enumerate(epoch, start=start):
            yield batch, k == per_epoch - 1
        epoch, start = loader, 0


def _resume_from(settings: FitSettings, log: RunLog) -> Path | None:
    """The checkpoint to resume from (None: a new run), after refusing a folder that holds another run.

    Every process checks (and raises), so none is left waiting for the others.
    """
    checkpoint = latest_checkpoint(settings.output_dir)
    if settings.resume:
        return checkpoint
    if checkpoint is not None or (log.path.exists() and not settings.replace_log):
        raise InputError("already holds a run (log.jsonl or checkpoints)", f"--output-dir {settings.output_dir}",
                         "a new folder; pass resume=True (--resume) to continue the run in it, or choose another "
                         "output_dir")
    return None


def _usable(micro: MicroBatch, accelerator: Any, log: RunLog, ceiling: SkipCeiling, step: int, where: str) -> bool:
    """Log `micro`'s skips and count every process's (one collective); whether every process's micro-batch
    holds samples. Every process counts everyone's skips, so that all of them stop at the same step."""
    if micro.skipped:
        log.skipped(micro.skipped, f"step {step}")
    mine = (micro.size, micro.skipped)
    rows = gather_object([mine]) if accelerator.num_processes > 1 else [mine]  # one (size, skipped) per process
    ceiling.add([s for _, skipped in rows for s in skipped], where.format(step=step))
    return all(size > 0 for size, _ in rows)


def _empty_epoch(ceiling: SkipCeiling) -> str:
    """The error of an epoch in which no micro-batch was usable on every process."""
    reasons = list(ceiling.reasons.values())
    return (f"no training batch could be loaded in a whole epoch: {len(reasons)} of {ceiling.num_samples} samples "
            f"of {ceiling.what} were skipped, e.g. {reasons[:3]}")
