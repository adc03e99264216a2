"""`TrainConfig`: one training stage, declared once.

Every field is a setting of `vlm_vision.train`, and every field is a flag of `vlm-vision train`
(`vlm_vision.commands.train` builds the flags from these fields, their types and the docstring under
each). A field whose value is one of a few names carries them in `metadata["choices"]`, checked
here and offered by the CLI. Defaults are LLaVA's recipe (its `scripts/v1_5`): stage 1 fits the
projector at 1e-3; stage 2 adds LoRA (r=128, alpha=256, dropout 0.05) at 2e-4 and keeps training
the projector at 2e-5.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from video.pooling import POOL_MODES
from vlm_vision.model.anyres import CONVENTIONS
from video.tower_pooling import DTYPES
from vlm_vision.model.video_tokens import VIDEO_NEWLINES

__all__ = ["DEFAULT_LR", "DEFAULT_PROJECTOR_LR", "LORA_TARGETS", "MIXED_PRECISIONS", "RESUMABLE_CHANGES",
           "TrainConfig", "config_dict"]

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Stage defaults (LLaVA-1.5 scripts): stage 1 projector 1e-3; stage 2 LoRA 2e-4, projector 2e-5.
DEFAULT_LR = {1: 1e-3, 2: 2e-4}
DEFAULT_PROJECTOR_LR = {1: 1e-3, 2: 2e-5}
MIXED_PRECISIONS = ("no", "bf16", "fp16")
# Fields that may change between a run and its resumption; any other difference is refused.
RESUMABLE_CHANGES = {"max_steps", "resume", "save_every", "keep_last", "eval_every", "eval_data", "eval_accuracy",
                     "progress", "num_workers", "max_skip_fraction"}


def _choice(default: Any, choices: tuple[Any, ...]) -> Any:
    """A field that takes one of `choices` (checked in `__post_init__`, offered by the CLI)."""
    return dataclasses.field(default=default, metadata={"choices": tuple(choices)})


@dataclasses.dataclass
class TrainConfig:
    """One training stage. Defaults are LLaVA's recipe; `vlm-vision train` maps flags 1:1 onto fields."""

    llm: str
    """Base LLM: Hub id, transformers folder, or `.gguf` file (tokenizer from the same place)."""
    tower: str
    """Vision tower: Hub id, folder, or checkpoint file (`CLIPVisionTower.from_pretrained`)."""
    data: str
    """Training records: `.json` (a list), `.jsonl`, a `prefix{a,b}.json` pattern or a LLaVA-NeXT `.yaml`
    mixture; LLaVA conversations or transformers chat `messages` (see `vlm_vision.data.formats`)."""
    output_dir: str
    """log.jsonl, skipped.jsonl, checkpoint-STEP/, final/ and loss.png go here."""
    media_root: str | None = None
    """Folder that media paths are relative to (default: the data file's folder)."""
    image_folder: str | None = None
    """Folder that image paths are relative to (LLaVA-NeXT's separate folders; default: `media_root`)."""
    video_folder: str | None = None
    """Folder that video paths are relative to (default: `media_root`)."""
    group_by_modality_length: bool = False
    """Batches of one modality (text, image or video) and similar length, seeded (LLaVA's option); less padding."""
    stage: int = _choice(1, (1, 2))
    """1: projector only. 2: LoRA on the LLM + projector."""
    max_steps: int = 1000
    """Optimizer steps."""
    batch_size: int = 1
    """Samples per micro-batch per process."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float | None = None
    """LoRA learning rate in stage 2; the projector's too when `projector_lr` is None (stage default when None:
    2e-4 in stage 2, 1e-3 in stage 1)."""
    projector_lr: float | None = None
    """Projector learning rate (default: `lr`, else 1e-3 in stage 1 and 2e-5 in stage 2)."""
    lora_r: int = 128
    """LoRA rank (stage 2)."""
    lora_alpha: int = 256
    """LoRA scale numerator (the update is scaled by alpha / r)."""
    lora_dropout: float = 0.05
    """Dropout on LoRA's input."""
    lora_targets: tuple[str, ...] = LORA_TARGETS
    """Names of the LLM's linear layers that get LoRA."""
    num_frames: int = 32
    """Frames sampled uniformly from each raw video (when `fps` is None)."""
    fps: float | None = None
    """Sample about this many frames per second of video instead of `num_frames` (LLaVA-Video: 1)."""
    min_frames: int = 1
    """With `fps`, the fewest frames a video gets (frames repeat in a short clip)."""
    max_frames: int | None = None
    """With `fps`, the most frames a video gets (LLaVA-Video: 64); the length scan assumes this many."""
    max_video_tokens: int | None = None
    """Token budget of one video: frames pool at up to twice `pool_stride` to fit it (`video.budget`)."""
    full_resolution_frames: bool = False
    """Send raw videos' frames from the decoder process at their own resolution and resize them afterwards,
    as earlier versions did (default: the decoder process resizes them for the tower; see docs/video.md)."""
    faster_token_stride: int | None = None
    """SlowFast (LLaVA-Video's add_faster_video): every k-th frame at `pool_stride`, the others at twice it,
    each frame followed by a learned `faster_token` (trained in both stages). None: off."""
    time_instruction: bool = False
    """Put LLaVA-Video's sentence with the duration and frame times after each `<video>`."""
    time_markers: bool = False
    """Put `<t=12.5s>` (the frame's presentation time) before each frame's tokens."""
    seed: int = 0
    """Seeds the data order, the initialisation and dropout."""
    resume: bool = False
    """Continue from the latest `checkpoint-STEP/` in `output_dir`."""
    eval_data: str | None = None
    """Evaluation records (same format as `data`)."""
    eval_every: int = 0
    """Evaluate every N steps (0: only at the end); needs `eval_data`."""
    eval_accuracy: bool = False
    """At each evaluation also answer the `eval_data` questions, with `vlm-vision eval`'s code, and log accuracy
    beside eval_loss: multiple choice (records with options and an answer) by generated letter and by
    log-likelihood, open-ended (the first gpt turn) by exact match and token F1."""
    save_every: int = 0
    """Write `checkpoint-STEP/` every N steps (0: never; `final/` is always written)."""
    keep_last: int = 2
    """Checkpoints kept; older ones are deleted."""
    mixed_precision: str = _choice("auto", ("auto", *MIXED_PRECISIONS))
    """"no", "bf16" or "fp16" (accelerate's autocast; trainable weights stay float32); "auto": bf16 on a GPU
    that has it (fp16 on older GPUs), "no" on the CPU."""
    gradient_checkpointing: bool | None = None
    """Recompute the LLM's activations in the backward pass instead of keeping them (less memory, more
    compute); None: on with a GPU, off on the CPU."""
    projector_type: str = "mlp2x_gelu"
    """Projector from tower width to LLM width: linear, mlp2x_gelu, ..."""
    train_new_token_embeddings: bool = False
    """Train the embedding rows of `<image>`/`<video>` when they were added to the tokenizer."""
    init_from: str | None = None
    """A previous run's `final/` (e.g. stage 1) to start the projector and token rows from."""
    max_length: int | None = None
    """Longest sequence, visual tokens included; None: the LLM's context (`max_position_embeddings`, else the
    tokenizer's `model_max_length`, else the longest visual span plus 1024 text tokens)."""
    warmup_ratio: float = 0.03
    """Fraction of `max_steps` of linear warmup before the cosine decay."""
    weight_decay: float = 0.0
    """AdamW weight decay of LoRA and projector matrices."""
    max_grad_norm: float = 1.0
    """Clip the gradient norm of the trainable weights (0: no clipping)."""
    select_layer: int = -2
    """Tower layer whose patch tokens feed the projector (LLaVA: the second to last)."""
    pool_stride: int = 2
    """Spatial pooling stride of video frames (24x24 -> 12x12 = 144 tokens per frame)."""
    pool_mode: str = _choice("average", POOL_MODES)
    """How video frames are pooled."""
    video_newline: str = _choice("no_token", VIDEO_NEWLINES)
    """Where the learned newline goes in a video's tokens (see `vlm_vision.model.fusion`)."""
    image_grid_pinpoints: list[list[int]] | None = None
    """LLaVA-NeXT "anyres" canvases for images, [height, width] multiples of the tower's image size
    (e.g. `vlm_vision.DEFAULT_PINPOINTS`); None: every image is one crop of 576 tokens (LLaVA-1.5)."""
    anyres_convention: str = _choice("transformers", CONVENTIONS)
    """"transformers" or "llava" (LLaVA's original code); see `vlm_vision.model.anyres`."""
    model_dtype: str = _choice("auto", ("auto", *DTYPES))
    """dtype of the frozen tower and base LLM ("bfloat16" halves their memory); "auto": bfloat16 on a GPU
    that has it, float32 otherwise."""
    num_workers: int = 0
    """DataLoader worker processes decoding videos; they also share a first scan of the data."""
    fsdp: bool = False
    """Shard the LLM, projector, gradients and optimizer state over the processes (PyTorch FSDP2; the tower
    stays whole); launch with several processes (torchrun, or accelerate with examples/accelerate/fsdp.yaml)."""
    max_skip_fraction: float = 0.05
    """Stop with an error once more than this fraction of the training samples has been skipped as bad data
    (undecodable or missing media, a visual span that cannot fit), listing the top reasons; 1.0 never stops."""
    accept_foreign_tokens: bool = False
    """Train on cached token files made by other weights or settings than this run's (random weights, another
    tower, layer, pooling or frame count); by default they are refused, naming the field and both values."""
    progress: bool = True
    """Show a tqdm progress bar."""

    def __post_init__(self) -> None:
        self.lora_targets = tuple(self.lora_targets)
        if self.image_grid_pinpoints is not None:  # lists, as they come back from JSON (resume compares them)
            self.image_grid_pinpoints = [[int(v) for v in p] for p in self.image_grid_pinpoints]
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 (projector) or 2 (LoRA + projector), got {self.stage!r}")
        for field in dataclasses.fields(self):
            choices = field.metadata.get("choices")
            if choices is not None and getattr(self, field.name) not in choices:
                raise ValueError(f"{field.name} must be one of {choices}, got {getattr(self, field.name)!r}")
        for name in ("max_steps", "batch_size", "grad_accum", "num_frames", "max_length", "lora_r", "keep_last"):
            value = getattr(self, name)
            if value is None and name == "max_length":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("save_every", "eval_every", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("lr", "projector_lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if not 0 <= self.max_skip_fraction <= 1:
            raise ValueError(f"max_skip_fraction must be in [0, 1], got {self.max_skip_fraction!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.fsdp and self.mixed_precision == "fp16":
            raise ValueError("fsdp with mixed_precision='fp16' has no gradient scaler here; use 'bf16'")
        if self.fsdp and self.train_new_token_embeddings:
            raise ValueError("fsdp cannot train the new tokens' rows (their splice into the embeddings is "
                             "not sharded); train them without fsdp, or leave train_new_token_embeddings off")
        if self.fsdp and self.eval_accuracy:
            raise ValueError("fsdp cannot answer eval questions during training (generation runs a different "
                             "number of forward passes on each process); run `vlm-vision eval` on `final/`")
        if self.eval_every and not self.eval_data:
            raise ValueError(f"eval_every={self.eval_every} needs eval_data")
        if self.eval_accuracy and not self.eval_data:
            raise ValueError("eval_accuracy needs eval_data (the questions to answer)")

    @property
    def lora_lr(self) -> float | None:
        """The LoRA learning rate (None in stage 1)."""
        return (self.lr or DEFAULT_LR[2]) if self.stage == 2 else None

    @property
    def resolved_projector_lr(self) -> float:
        """`projector_lr`, else `lr`, else the stage default."""
        return self.projector_lr or self.lr or DEFAULT_PROJECTOR_LR[self.stage]

    @property
    def uses_newline(self) -> bool:
        """Whether the model's `image_newline` appears in its inputs (and so trains)."""
        return self.video_newline != "no_token" or self.image_grid_pinpoints is not None


def config_dict(config: TrainConfig) -> dict[str, Any]:
    """The fields of `config` as JSON values (what `trainer_state.json` stores and resume compares)."""
    values = dataclasses.asdict(config)
    values["lora_targets"] = list(values["lora_targets"])
    return values
