"""The processor files and chat template of an exported transformers folder.

`AutoProcessor.from_pretrained(folder)` needs the image and video processors and the processor's
own settings, in the layout the installed transformers writes: transformers 5 nests both
processors in `processor_config.json`; 4.x wrote `preprocessor_config.json` (images),
`video_preprocessor_config.json` and a flat `processor_config.json`. The values are the tower's
(size, crop, mean/std, bicubic resample, patch size), the model's anyres pinpoints and feature
strategy, and the extra-token count (CLIP's CLS: 1, which the "default" strategy drops again).
`do_sample_frames` stays off, as the class has it: the card says how training sampled.

The chat template wraps the base LLM's own: typed message parts (`{"type": "video"}`,
`{"type": "image"}`, `{"type": "text", "text": ...}`) are first joined by newlines into the
string content training rendered (`VisionLanguageProcessor.apply_chat_template` does the same),
then the base template runs unchanged. A model trained with LLaVA-Video's time instruction gets
that sentence after `<video>`, from the part's `duration` and `frame_times` (seconds), in the
wording of `vlm_vision.model.video_prompt.time_instruction`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["FORMATS", "ProcessorSettings", "as_typed", "processor_files", "sample_conversations",
           "typed_parts_template"]

FORMATS = ("llava-next-video", "llava-projector")
"""What `vlm-vision export` writes: a transformers folder, or LLaVA's projector file."""
_PIL_BICUBIC = 3
_RESCALE = 1 / 255


@dataclass(frozen=True)
class ProcessorSettings:
    """What the exported processor must reproduce of the trained one."""

    image_size: int
    """The tower's input side S (shortest edge resized to S, then an S x S centre crop)."""
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    patch_size: int
    select_strategy: str
    """transformers' `vision_feature_select_strategy` ("default": patches only; "full": with CLS)."""
    image_grid_pinpoints: list[list[int]] | None
    num_frames: int | None
    """transformers' `num_frames` (fixed-count sampling), or None with `fps`."""
    fps: float | None
    chat_template: str
    image_token: str = "<image>"
    video_token: str = "<video>"


def _sizes(side: int) -> dict[str, Any]:
    return {"size": {"shortest_edge": side}, "crop_size": {"height": side, "width": side}}


def _common(settings: ProcessorSettings) -> dict[str, Any]:
    return {**_sizes(settings.image_size), "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True,
            "do_rescale": True, "do_resize": True, "image_mean": list(settings.mean), "image_std": list(settings.std),
            "resample": _PIL_BICUBIC, "rescale_factor": _RESCALE}


def _image_processor(settings: ProcessorSettings) -> dict[str, Any]:
    config = {**_common(settings), "do_pad": True, "image_processor_type": "LlavaNextImageProcessor"}
    if settings.image_grid_pinpoints is not None:
        config["image_grid_pinpoints"] = [list(p) for p in settings.image_grid_pinpoints]
    return config


def _video_processor(settings: ProcessorSettings) -> dict[str, Any]:
    # transformers refuses num_frames and fps together: exactly one is set.
    sampling = {"num_frames": settings.num_frames} if settings.fps is None else {"fps": settings.fps}
    return {**_common(settings), "do_sample_frames": False, **sampling, "return_metadata": False,
            "video_processor_type": "LlavaNextVideoVideoProcessor"}


def _processor_fields(settings: ProcessorSettings) -> dict[str, Any]:
    return {"image_token": settings.image_token, "num_additional_image_tokens": 1, "patch_size": settings.patch_size,
            "processor_class": "LlavaNextVideoProcessor", "video_token": settings.video_token,
            "vision_feature_select_strategy": settings.select_strategy}


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def processor_files(settings: ProcessorSettings, transformers_major: int) -> dict[str, str]:
    """File name -> text of the processor files, in the layout of transformers `transformers_major`.

    Example:
        >>> sorted(processor_files(settings, 5))
        ['chat_template.jinja', 'processor_config.json']
    """
    files = {"chat_template.jinja": settings.chat_template}
    if transformers_major >= 5:
        nested = {"image_processor": _image_processor(settings), "video_processor": _video_processor(settings)}
        files["processor_config.json"] = _json(_processor_fields(settings) | nested)
        return files
    tag = {"processor_class": "LlavaNextVideoProcessor"}
    files["preprocessor_config.json"] = _json(_image_processor(settings) | tag)
    files["video_preprocessor_config.json"] = _json(_video_processor(settings) | tag)
    files["processor_config.json"] = _json(_processor_fields(settings))
    return files


# ----- the chat template ----------------------------------------------------------------------------

# LLaVA-Video's sentence (`vlm_vision.model.video_prompt.time_instruction`) from a video part's
# `duration` and `frame_times`; Jinja's "%.2f" rounds as Python's format does.
_TIME_SENTENCE = (
    "{%- if part['duration'] is not defined or part['frame_times'] is not defined -%}"
    "{{- raise_exception('this model was trained with the time instruction: give each video part its duration and "
    "frame_times (seconds)') -}}"
    "{%- endif -%}"
    "{%- set _at = namespace(list=[]) -%}"
    "{%- for t in part['frame_times'] -%}{%- set _at.list = _at.list + ['%.2f' | format(t) + 's'] -%}{%- endfor -%}"
    "{%- set _vlm.pieces = _vlm.pieces + ['{video}\\nThe video lasts for ' + '%.2f' | format(part['duration']) + "
    "' seconds, and ' + (part['frame_times'] | length | string) + ' frames are uniformly sampled from it. These "
    "frames are located at ' + _at.list | join(',') + '.Please answer the following questions related to this "
    "video.'] -%}"
)


def typed_parts_template(base: str, *, image_token: str = "<image>", video_token: str = "<video>",
                         time_instruction: bool = False) -> str:
    """The base chat template, preceded by a step that turns typed parts into training's string content.

    String contents pass through unchanged, so the wrapped template renders exactly what the base
    one renders for training's messages.

    Raises:
        ValueError: for an empty base template.
    """
    if not base:
        raise ValueError("the tokenizer has no chat template to wrap")
    video = (_TIME_SENTENCE.replace("{video}", video_token) if time_instruction
             else "{%- set _vlm.pieces = _vlm.pieces + ['" + video_token + "'] -%}")
    prefix = (
        "{#- vlm-vision: typed parts -> the training prompt, then the base LLM's template -#}"
        "{%- set _vlm = namespace(messages=[], pieces=[]) -%}"
        "{%- for message in messages -%}"
        "{%- if message['content'] is string or message['content'] is none -%}"
        "{%- set _vlm.messages = _vlm.messages + [message] -%}"
        "{%- else -%}"
        "{%- set _vlm.pieces = [] -%}"
        "{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'video' -%}" + video +
        "{%- elif part['type'] == 'image' -%}{%- set _vlm.pieces = _vlm.pieces + ['" + image_token + "'] -%}"
        "{%- elif part['type'] == 'text' -%}{%- set _vlm.pieces = _vlm.pieces + [part['text']] -%}"
        "{%- else -%}{{- raise_exception('unknown message part type: ' + (part['type'] | string)) -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- set _vlm.messages = _vlm.messages + [dict(message, content=_vlm.pieces | join('\\n'))] -%}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- set messages = _vlm.messages %}"  # no trailing '-': the base template's first characters stay
    )
    return prefix + base


def sample_conversations(video_token: str = "<video>") -> list[list[dict[str, Any]]]:
    """Conversations (string contents) the wrapped template must render as the base one does."""
    return [
        [{"role": "user", "content": f"{video_token}\nWhat happens in this video?"}],
        [{"role": "system", "content": "You are a helpful assistant."},
         {"role": "user", "content": f"{video_token}\nDescribe it."}, {"role": "assistant", "content": "A clip."},
         {"role": "user", "content": "And then?"}],
    ]


def as_typed(messages: Sequence[dict[str, Any]], *, image_token: str = "<image>",
             video_token: str = "<video>") -> list[dict[str, Any]]:
    """The same messages with each string content split into typed parts (placeholders on their own line)."""
    out = []
    for m in messages:
        parts: list[dict[str, Any]] = []
        for line in m["content"].split("\n"):
            kind = {video_token: "video", image_token: "image"}.get(line)
            parts.append({"type": kind} if kind else {"type": "text", "text": line})
        out.append({**m, "content": parts})
    return out
