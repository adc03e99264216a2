"""The model behind `vlm-vision demo`: sample a video's frames, count its tokens, answer a question as a stream.

Any model `vlm-vision eval` loads works (`vlm_vision.evaluation.model.load_eval_model`). The frame
sampling (count or rate) and LLaVA-Video's time instruction are chosen per request, the way
`vlm-vision eval --num-frames/--fps` choose them for a run. Answers are greedy, as in `eval`, and
come token by token (transformers' `TextIteratorStreamer`, the generation in a thread). One
question is answered at a time (a lock): the model is shared by every browser tab.

Shapes: T frames, S image side.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from video.clip import VideoDecodeError
from video.decode import load_video
from vlm_vision.errors import InputError
from vlm_vision.evaluation.questions import Question
from vlm_vision.evaluation.media import Loaded
from vlm_vision.evaluation.model import load_eval_model
from vlm_vision.evaluation.answers import pooled_features, prompt_ids, prompt_token_counts, stop_ids
from vlm_vision.model.processor import VisionLanguageProcessor

__all__ = ["Sampling", "DemoModel", "check_video"]

MAX_FRAMES = 256


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the page asks for a video's frames: `num_frames` uniform ones, or `fps` per second (at most
    `num_frames`), and whether the prompt carries LLaVA-Video's time instruction."""

    num_frames: int
    fps: float | None = None
    time_instruction: bool = False

    @classmethod
    def from_request(cls, body: dict[str, Any], default: "Sampling") -> "Sampling":
        """The sampling a request asks for (the server's defaults for what it leaves out).

        Raises:
            InputError: a frame count outside 1..256, or a rate that is not a positive number.
        """
        try:
            frames = body.get("num_frames")
            frames = int(frames) if frames not in (None, "") else default.num_frames
            fps = body.get("fps")
            fps = float(fps) if fps not in (None, "") else None
        except (TypeError, ValueError) as e:
            raise InputError("not a number", f"{body.get('num_frames')!r}, {body.get('fps')!r}",
                             "a whole frame count and an fps number (or empty)") from e
        if not 1 <= frames <= MAX_FRAMES:
            raise InputError("frame count out of range", frames, f"1 to {MAX_FRAMES} frames")
        if fps is not None and not 0 < fps <= 60:
            raise InputError("fps out of range", fps, "a rate above 0 and at most 60 frames per second, or empty")
        time_instruction = body.get("time_instruction")
        return cls(frames, fps, default.time_instruction if time_instruction is None else bool(time_instruction))


def check_video(path: Path, max_seconds: float, name: str | None = None) -> float:
    """The video's duration in seconds, when it decodes and is at most `max_seconds` long (`name`: the
    file's name in messages, default its own).

    Raises:
        InputError: not a video we can decode, or too long.
    """
    try:
        clip = load_video(path, num_frames=1)
    except (VideoDecodeError, ValueError) as e:
        name = name or path.name
        reason = str(getattr(e, "reason", e)).replace(str(path), name).replace(path.name, name)
        raise InputError("not a video", name, f"a video file FFmpeg can decode ({reason})") from e
    if clip.duration > max_seconds:
        raise InputError("video too long", name or path.name, f"at most {max_seconds / 60:g} minutes; it lasts "
                                                      f"{clip.duration / 60:.1f} minutes")
    return clip.duration


def _jpeg_url(frame: torch.Tensor, height: int = 96) -> str:
    """One uint8[H, W, 3] frame as a `height`-pixel JPEG data URL."""
    from PIL import Image  # lazy: thumbnails only

    image = Image.fromarray(frame.numpy())
    image = image.resize((max(1, round(height * image.width / image.height)), height), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode()


class DemoModel:
    """A loaded model and tokenizer, answering questions about videos one at a time."""

    def __init__(self, model: str, *, device: torch.device, dtype: torch.dtype, max_new_tokens: int) -> None:
        self.model, self.processor = load_eval_model(model, device=device, dtype=dtype)
        self.max_new_tokens = max_new_tokens
        self.lock = threading.Lock()

    def default_sampling(self, num_frames: int | None, fps: float | None) -> Sampling:
        """The model's own frame sampling and time instruction, with the command's overrides."""
        return Sampling(num_frames or self.processor.num_frames, fps if fps is not None else self.processor.fps,
                        bool(getattr(self.processor, "time_instruction", False)))

    def _processor(self, sampling: Sampling) -> VisionLanguageProcessor:
        p = self.processor
        frames = {"fps": sampling.fps, "min_frames": p.min_frames,
                  "max_frames": sampling.num_frames if sampling.fps is not None else None}
        return VisionLanguageProcessor.for_model(p.tokenizer, self.model, num_frames=sampling.num_frames,
                                                 padding_side="left", time_instruction=sampling.time_instruction,
                                                 time_markers=p.time_markers, **frames)

    def _load(self, path: Path, question: str, sampling: Sampling) -> tuple[Any, Loaded, Any]:
        """(clip, the question with its frames ready for the model, processor)."""
        processor = self._processor(sampling)
        clip = load_video(path, **processor.video_sampling(sampling.num_frames))
        q = Question(id="demo", source="demo", media_kind="video", media_path=path, question=question,
                     references=("",))
        item = Loaded(q, "video", self.model.tower.image_transform(clip.frames), duration=clip.duration,
                      times=list(clip.presentation_times), indices=list(clip.indices))  # (T, 3, S, S)
        return clip, item, processor

    def look(self, path: Path, sampling: Sampling) -> dict[str, Any]:
        """The frames the model would see (thumbnails, indices, times) and the prompt's token budget."""
        with self.lock:
            clip, item, processor = self._load(path, "", sampling)
            tokens = prompt_token_counts(prompt_ids(self.model, processor, item), item, processor)
        return {"duration": round(clip.duration, 3), "native_fps": round(clip.native_fps, 3),
                "frames": [{"index": i, "time": round(t, 3), "src": _jpeg_url(f)}
                           for i, t, f in zip(clip.indices, clip.presentation_times, clip.frames)],
                "tokens": tokens, "max_video_tokens": self.model.max_video_tokens,
                "stride": self.model.video_layout.stride_for(len(clip.indices))}

    def ask(self, path: Path, question: str, sampling: Sampling) -> Iterator[str]:
        """The greedy answer to `question` about the video, piece by piece as it is generated."""
        from transformers import TextIteratorStreamer  # lazy: transformers' streamer, for the demo only

        with self.lock:
            _, item, processor = self._load(path, question, sampling)
            tokenizer, device = processor.tokenizer, self.model.tower.device
            ids = torch.tensor([prompt_ids(self.model, processor, item)], device=device)  # (1, L)
            features = pooled_features([item], self.model)[id(item)]  # (T, N', D_v)
            streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
            failure: list[BaseException] = []

            def generate() -> None:
                try:
                    with torch.no_grad():
                        self.model.generate(ids, torch.ones_like(ids), video_features=[features],
                                            max_new_tokens=self.max_new_tokens, do_sample=False, streamer=streamer,
                                            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                                            eos_token_id=stop_ids(self.model, tokenizer), use_cache=True)
                except BaseException as e:  # noqa: BLE001 - reported on the page, then the stream ends
                    failure.append(e)
                    streamer.end()

            worker = threading.Thread(target=generate, daemon=True)
            worker.start()
            yield from streamer
            worker.join()
            if failure:
                raise RuntimeError(f"generation failed: {failure[0]}") from failure[0]
