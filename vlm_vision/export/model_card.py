"""The `README.md` of an exported model: what it is, how it was fed, how to use it without our code.

A card is text built from facts the export already holds (`CardFacts`): the base LLM and tower,
how frames were sampled, pooled and laid out, the prompt format, the transformers version that
wrote the folder and the oldest that reads it, and the eval metrics the training run logged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CardFacts", "model_card"]


@dataclass(frozen=True)
class CardFacts:
    """Everything a card states (no I/O here)."""

    name: str
    source: str
    """The run folder the export was made from."""
    base_llm: str
    tower: str
    image_size: int
    patch_size: int
    select_layer: int
    select_strategy: str
    projector: str
    pool_stride: int
    pool_mode: str
    tokens_per_frame: int
    num_frames: int
    fps: float | None
    min_frames: int
    max_frames: int | None
    time_instruction: bool
    image_grid_pinpoints: list[list[int]] | None
    transformers_version: str
    min_transformers: str
    example_prompt: str
    stage: int | None = None
    train: Mapping[str, Any] | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    """Eval entries of the run's `log.jsonl` (step, eval_loss, accuracies), oldest first."""
    warnings: list[str] = field(default_factory=list)
    llava_checkpoint: bool = False
    """The source was an original LLaVA checkpoint folder (its tokenizer got `<image>`/`<video>`)."""


def _source_note(facts: CardFacts) -> str:
    if not facts.llava_checkpoint:
        return ""
    return (", an original LLaVA checkpoint (LLaVA's own layout). Its tokenizer had no placeholder tokens: the "
            "export added `<image>` and `<video>` as special tokens and grew the LLM's embeddings by two rows, set "
            "to the mean of the existing rows (they are replaced by visual features, never read by the LLM)")


def _sampling(facts: CardFacts) -> str:
    if facts.fps is None:
        return (f"{facts.num_frames} frames per video, spread evenly over the whole clip, first and last frame "
                f"included: frame indices `numpy.linspace(0, total - 1, {facts.num_frames}).astype(int)` "
                f"(LLaVA-NeXT-Video's rule).")
    upto = f", at most {facts.max_frames}" if facts.max_frames else ""
    return (f"about {facts.fps:g} frames per second of video (every round(native_fps / {facts.fps:g})-th frame from "
            f"the first), at least {facts.min_frames}{upto}; above the limit, that many frames spread evenly.")


def _table(facts: CardFacts) -> str:
    feature = "patch tokens (CLS dropped)" if facts.select_strategy == "default" else "CLS + patch tokens"
    images = (f"anyres tiling on canvases {facts.image_grid_pinpoints} ([height, width])"
              if facts.image_grid_pinpoints else "one crop per image in training (see the note above)")
    rows = [
        ("architecture", "`LlavaNextVideoForConditionalGeneration` (`model_type` `llava_next_video`)"),
        ("base LLM", f"`{facts.base_llm}`"),
        ("vision tower", f"`{facts.tower}`: CLIP, {facts.image_size} px, patch {facts.patch_size}, features of "
                         f"layer {facts.select_layer}, {feature}"),
        ("projector", f"`{facts.projector}` (two linear layers with exact GELU)"),
        ("frames", _sampling(facts)),
        ("pooling", f"{facts.pool_stride}x{facts.pool_stride} {facts.pool_mode} pooling of each frame's patch grid: "
                    f"{facts.tokens_per_frame} tokens per frame"),
        ("layout", "each video's frames in order, one `<video>` position per pooled token, no newline tokens"),
        ("images", images),
        ("training", _training(facts)),
        ("transformers", f"written with {facts.transformers_version}; needs >= {facts.min_transformers} to read the "
                         f"processor"),
    ]
    return "| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)


def _training(facts: CardFacts) -> str:
    if facts.stage is None:
        return "not recorded"
    train = facts.train or {}
    settings = [f"{k} {train[k]}" for k in ("max_steps", "batch_size", "lr", "projector_lr", "lora_r", "num_frames")
                if train.get(k) is not None]
    what = "projector" if facts.stage == 1 else "projector + LoRA on the LLM (merged here)"
    return f"stage {facts.stage}: {what}" + (f"; {', '.join(settings)}" if settings else "")


def _metrics(facts: CardFacts) -> str:
    if not facts.metrics:
        return "The training run logged no evaluation.\n"
    keys = sorted({k for e in facts.metrics for k in e if k != "step"})
    head = "| step | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys) + "\n"
    body = "".join(f"| {e.get('step', '')} | " + " | ".join(_number(e.get(k)) for k in keys) + " |\n"
                   for e in facts.metrics)
    return "Logged by the training run on its eval data (`log.jsonl`):\n\n" + head + body


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("" if value is None else str(value))


def _time_note(facts: CardFacts) -> str:
    if not facts.time_instruction:
        return ""
    return ("\nThis model was trained with LLaVA-Video's time instruction: the sentence \"The video lasts for D "
            "seconds, and T frames are uniformly sampled from it. These frames are located at t0s,t1s,....Please "
            "answer the following questions related to this video.\" follows `<video>`. The chat template writes "
            "it from the video part's `duration` and `frame_times` (seconds, each frame's presentation time): "
            "`{\"type\": \"video\", \"duration\": 12.0, \"frame_times\": [0.0, 0.4, ...]}`.\n")


def model_card(facts: CardFacts) -> str:
    """The card's Markdown text."""
    warnings = "".join(f"> **Note.** {w}\n\n" for w in facts.warnings)
    frames = f"num_frames={facts.num_frames}" if facts.fps is None else f"fps={facts.fps:g}"
    text = f"""---
library_name: transformers
pipeline_tag: video-text-to-text
tags:
- llava-next-video
- vlm-vision
---

# {facts.name}

A LLaVA-NeXT-Video model exported by `vlm-vision export` from `{facts.source}`{_source_note(facts)}.

{warnings}{_table(facts)}
## Prompt format

The chat template renders typed message parts (`{{"type": "video"}}`, `{{"type": "image"}}`,
`{{"type": "text", "text": ...}}`) into exactly the prompt training used: the parts of a message
joined by newlines, then the base LLM's own chat template. The prompt for one video and a question:

```
{facts.example_prompt}
```

The template writes the special tokens itself: tokenize the rendered prompt with
`add_special_tokens=False`.
{_time_note(facts)}
## Frames

Training sampled {_sampling(facts)} The video processor's `do_sample_frames` is off (the class
default): pass frames already sampled this way, as uint8 `[T, H, W, 3]`. With
`do_sample_frames=True` transformers samples its own way instead ({frames} is set for it).

## Use with transformers

```python
import av
import numpy as np
from transformers import AutoProcessor, LlavaNextVideoForConditionalGeneration

processor = AutoProcessor.from_pretrained("MODEL")
model = LlavaNextVideoForConditionalGeneration.from_pretrained("MODEL")
with av.open("clip.mp4") as container:
    frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
frames = frames[np.linspace(0, len(frames) - 1, {facts.num_frames}).astype(int)]
messages = [{{"role": "user", "content": [{{"type": "video"}}, {{"type": "text", "text": "What happens?"}}]}}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(text=prompt, videos=[frames], add_special_tokens=False, return_tensors="pt")
answer = model.generate(**inputs, max_new_tokens=64, do_sample=False)
print(processor.batch_decode(answer[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

## Serve with vLLM

vLLM implements `LlavaNextVideoForConditionalGeneration` for video input (one `<video>` per
prompt; images are not accepted there). It reads this folder with the same processor files:

```bash
vllm serve MODEL
```

then send OpenAI chat requests with one `video_url` part. vLLM samples frames itself (not
necessarily as training did); for exact frames pass them offline:
`LLM(model="MODEL").generate({{"prompt": prompt, "multi_modal_data": {{"video": frames}}}})`.

## Evaluation

{_metrics(facts)}"""
    return text.replace("MODEL", facts.name)
