"""Prompt + media -> model inputs, with one placeholder token per visual token.

`VisionLanguageModel` follows transformers' convention: `<image>` and `<video>` are single special
tokens in the tokenizer, and the prompt given to the model already repeats each one once per visual
token (576 per 336 px image; frames x 144 per video at pool stride 2). This processor does that
expansion *after* tokenizing, on ids, so the count is exact by construction and the text around
the placeholder tokenizes exactly as it would at inference.

The number of tokens comes from the same numbers the model uses (the tower's patch grid, the pool
stride, the newline layout) through `video.num_video_tokens`; build the processor with
`VisionLanguageProcessor.for_model` to take them from a model.

How many frames a video path gives, and at which stride they pool, follow `video.budget` with the
model's settings (`VideoLayout`): fixed `num_frames` (LLaVA-NeXT-Video), or `fps` with `min_frames`
/ `max_frames`, within `max_video_tokens`. With `time_instruction` or `time_markers` the prompt also
says when each frame was taken (`vlm_vision.model.video_prompt`); markers are text between the frames'
placeholder runs, so the model's splice is unchanged.

Truncation is where the references hurt users most: cutting a sequence inside the 4608 tokens of a
32-frame video gives "Video features and video tokens do not match: tokens 1004, features 4608" far
from the cause. Here truncation only ever removes text; if the limit would cut a visual span the
processor refuses, saying how many tokens the sample needs and how many were allowed.

Shapes: B batch, L sequence, I images, V videos, T frames, S image side.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Union

import torch
from tokenizers import AddedToken

from video.budget import VideoLayout, sampled_frame_count
from video.decode import load_video
from vlm_vision.model.anyres import anyres_batch, anyres_num_tokens
from vlm_vision.model.llm import padding_id
from vlm_vision.model.placeholders import VisualSpanCut, expand_placeholders, truncate
from vlm_vision.model.video_prompt import time_instruction, time_marker

__all__ = ["VisionLanguageProcessor"]

Message = Mapping[str, Any]
TextInput = Union[str, Sequence[Message]]


class VisionLanguageProcessor:
    """Tokenizer + image transform + video loading for `VisionLanguageModel`.

    Args:
        tokenizer: a transformers tokenizer; `<image>` and `<video>` are added as special tokens
            when missing (then resize the LLM's embeddings with `resize_embeddings`).
        image_transform: callable images/frames -> float[T, 3, S, S] (`CLIPImageTransform`).
        num_frames: frames sampled from a video given as a path (fixed-count mode, `fps=None`).
        fps: sample about this many frames per second of video instead (LLaVA-Video: 1).
        min_frames: the fewest frames sampled from a path.
        max_frames: the most frames sampled from a path (LLaVA-Video: 64).
        max_video_tokens: the model's token budget per video (`video.budget`); None: none.
        pool_stride: the model's spatial pooling stride for videos.
        pool_mode: the model's pooling mode (average/max need strides that divide the grid).
        faster_token_stride: the model's SlowFast setting (None: off).
        time_instruction: put LLaVA-Video's time sentence after each `<video>` (needs frame times:
            give videos as paths or `VideoClip`s).
        time_markers: put `<t=12.5s>` before each frame's tokens (same requirement).
        grid: the tower's patch grid (rows, cols), (24, 24) for ViT-L/14@336.
        video_newline: the model's video newline layout ("no_token", "one_token", "frame", "grid").
        image_tokens: tokens per image (576 for ViT-L/14@336).
        image_grid_pinpoints: LLaVA-NeXT anyres canvases; when set, each image becomes a base crop
            plus tiles and its token count depends on its size (`vlm_vision.model.anyres`).
        anyres_convention: "transformers" or "llava" (see `vlm_vision.model.anyres`).
        image_token: the image placeholder string.
        video_token: the video placeholder string.
        padding_side: "left" (for generation) or "right"; the tokenizer's own side when None.

    Example:
        >>> processor = VisionLanguageProcessor(tokenizer, CLIPImageTransform(336))
        >>> inputs = processor("USER: <video>\\nWhat happens? ASSISTANT:", videos=["clip.mp4"])
        >>> inputs["input_ids"].shape, inputs["pixel_values_videos"].shape  # 32 x 144 = 4608 video tokens
    """

    def __init__(self, tokenizer: Any, image_transform: Any, *, num_frames: int = 32, pool_stride: int = 2,
                 grid: tuple[int, int] = (24, 24), video_newline: str = "no_token", image_tokens: int = 576,
                 image_token: str = "<image>", video_token: str = "<video>", padding_side: str | None = None,
                 image_grid_pinpoints: Sequence[Sequence[int]] | None = None, anyres_convention: str = "transformers",
                 fps: float | None = None, min_frames: int = 1, max_frames: int | None = None,
                 max_video_tokens: int | None = None, pool_mode: str = "average",
                 faster_token_stride: int | None = None, time_instruction: bool = False, time_markers: bool = False,
                 full_resolution_frames: bool = False):
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.layout = VideoLayout(grid=tuple(grid), pool_stride=pool_stride, pool_mode=pool_mode,
                                  newline=video_newline, faster_token_stride=faster_token_stride,
                                  max_video_tokens=max_video_tokens)  # validates early
        self.fps, self.min_frames = fps, min_frames
        self.max_frames = self.layout.frame_limit(max_frames, min_frames)  # raises when min_frames cannot fit
        sampled_frame_count(1, 1.0, fps, num_frames=num_frames, min_frames=min_frames, max_frames=self.max_frames)
        self.time_instruction, self.time_markers = time_instruction, time_markers
        self.full_resolution_frames = full_resolution_frames  # else the decoder resizes (`video_sampling`)
        self.tokenizer = tokenizer
        self.image_transform = image_transform
        self.num_frames = num_frames
        self.image_tokens = image_tokens
        self.image_grid_pinpoints = image_grid_pinpoints
        self.anyres_convention = anyres_convention
        if image_grid_pinpoints is not None:  # validates pinpoints, tile and patch sizes early
            self.num_image_tokens(image_transform.image_size, image_transform.image_size)
        self.image_token = image_token
        self.video_token = video_token
        self.padding_side = _check_side(padding_side or tokenizer.padding_side)
        self.added_tokens = _add_special_tokens(tokenizer, [image_token, video_token])
        self.image_token_id: int = tokenizer.convert_tokens_to_ids(image_token)
        self.video_token_id: int = tokenizer.convert_tokens_to_ids(video_token)

    @classmethod
    def for_model(cls, tokenizer: Any, model: Any, *, num_frames: int = 32, **kwargs: Any) -> "VisionLanguageProcessor":
        """A processor whose token counts and preprocessing are those of `model` (a `VisionLanguageModel`).

        Raises:
            ValueError: when the tokenizer's placeholder ids differ from the model's.
        """
        processor = cls(tokenizer, model.tower.image_transform, num_frames=num_frames, pool_stride=model.pool_stride,
                        grid=model.tower.grid_size, video_newline=model.video_newline,
                        image_tokens=model.image_tokens, image_grid_pinpoints=model.image_grid_pinpoints,
                        anyres_convention=model.anyres_convention, pool_mode=model.pool_mode,
                        faster_token_stride=model.faster_token_stride, max_video_tokens=model.max_video_tokens,
                        **kwargs)
        for kind, ours, theirs in (("image", processor.image_token_id, model.image_token_id),
                                   ("video", processor.video_token_id, model.video_token_id)):
            if theirs is not None and ours != theirs:
                raise ValueError(f"the tokenizer's {kind} placeholder has id {ours} but the model expects {theirs}")
        return processor

    # ----- the model's video settings (held once, in `layout`) ------------------------------------

    @property
    def pool_stride(self) -> int:
        """The model's spatial pooling stride for videos."""
        return self.layout.pool_stride

    @property
    def grid(self) -> tuple[int, int]:
        """The tower's patch grid (rows, cols)."""
        return self.layout.grid

    @property
    def video_newline(self) -> str:
        """The model's video newline layout."""
        return self.layout.newline

    # ----- counts and embeddings ----------------------------------------------------------------

    def num_video_tokens(self, num_frames: int) -> int:
        """Placeholder tokens for a video of `num_frames` frames (at the stride the budget gives it)."""
        return self.layout.video_tokens(num_frames)

    def video_span(self, num_frames: int, times: Sequence[float] | None = None) -> list[int]:
        """The ids a `<video>` of `num_frames` frames expands to: its placeholders, each frame's run
        preceded by its time marker when `time_markers` is on (`times`: each frame's seconds)."""
        counts = self.layout.frame_tokens(num_frames, self.layout.stride_for(num_frames))
        if not self.time_markers:
            return [self.video_token_id] * sum(counts)
        if times is None or len(times) != num_frames:
            raise ValueError(f"time markers need each frame's time: {num_frames} frames, "
                             f"{'no' if times is None else len(times)} times")
        ids: list[int] = []
        for t, count in zip(times, counts):
            ids += self.tokenizer(time_marker(t), add_special_tokens=False)["input_ids"] + [self.video_token_id] * count
        return ids

    def resize_embeddings(self, llm: Any) -> Any:
        """Grow `llm`'s token embeddings (and head) to the tokenizer's size when tokens were added.

        Accepts a transformers model or a `VisionLanguageModel` (its `.llm`). Returns the LLM.
        """
        llm = getattr(llm, "llm", llm)
        if llm.get_input_embeddings().num_embeddings < len(self.tokenizer):
            llm.resize_token_embeddings(len(self.tokenizer))
        return llm

    # ----- text ---------------------------------------------------------------------------------

    def apply_chat_template(self, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
        """Render a conversation with the tokenizer's chat template.

        A message's content is a string holding `<image>`/`<video>`, or a list of parts
        `{"type": "image" | "video"}` / `{"type": "text", "text": ...}`, joined by newlines into such
        a string before the template runs (so text-only LLM templates work).

        Raises:
            ValueError: when the template does not copy every placeholder into its output.
        """
        rendered = [{**m, "content": self._content(m.get("content", ""))} for m in messages]
        text = self.tokenizer.apply_chat_template(rendered, tokenize=False, add_generation_prompt=add_generation_prompt)
        for token in (self.image_token, self.video_token):
            asked = sum(m["content"].count(token) for m in rendered)
            if text.count(token) != asked:
                raise ValueError(f"the chat template turned {asked} {token} placeholders into {text.count(token)}; "
                                 f"it must copy message content as it is")
        return text

    def _content(self, content: Any) -> str:
        if isinstance(content, str):
            return content
        placeholders = {"image": self.image_token, "video": self.video_token}
        pieces = []
        for part in content:
            kind = part.get("type")
            if kind in placeholders:
                pieces.append(placeholders[kind])
            elif kind == "text":
                pieces.append(part["text"])
            else:
                raise ValueError(f"unknown message part type {kind!r}; use 'text', 'image' or 'video'")
        return "\n".join(pieces)

    # ----- media --------------------------------------------------------------------------------

    def load_clip(self, video: Any) -> Any:
        """A path decoded into a `VideoClip` with the processor's sampling (`num_frames`, or `fps`
        with `min_frames`/`max_frames` within the token budget); anything else returned as it is."""
        if not isinstance(video, (str, os.PathLike)):
            return video
        return load_video(video, **self.video_sampling())

    def video_sampling(self, num_frames: int | None = None) -> dict[str, Any]:
        """`video.load_video`'s frame arguments for this processor (`num_frames` overrides the fixed count).

        Training and evaluation both decode with these: frames leave the decoder process already
        resized by the image transform's rule (`frame_scale`), unless `full_resolution_frames`.
        """
        scale = None
        if not self.full_resolution_frames and hasattr(self.image_transform, "frame_scale"):
            scale = self.image_transform.frame_scale()
        if self.fps is None:
            return {"num_frames": sampled_frame_count(1, 1.0, None, num_frames=num_frames or self.num_frames,
                                                      min_frames=self.min_frames, max_frames=self.max_frames),
                    "frame_scale": scale}
        return {"fps": self.fps, "min_frames": self.min_frames, "max_frames": self.max_frames, "frame_scale": scale}

    def load_frames(self, video: Any) -> torch.Tensor:
        """A video as uint8[T, H, W, 3]: a path is decoded and sampled (`load_clip`); a `VideoClip`
        gives its frames; an array/tensor of frames is used as it is."""
        return torch.as_tensor(getattr(self.load_clip(video), "frames", video))

    def preprocess_videos(self, videos: Sequence[Any]) -> torch.Tensor | list[torch.Tensor]:
        """float[V, T, 3, S, S] (a list of float[T_v, 3, S, S] when frame counts differ)."""
        clips = [self.image_transform(self.load_frames(video)) for video in videos]  # V x (T_v, 3, S, S)
        if len({clip.shape for clip in clips}) == 1:
            return torch.stack(clips)  # (V, T, 3, S, S)
        return clips

    def preprocess_images(self, images: Sequence[Any]) -> torch.Tensor:
        """float[I, 3, S, S], one crop per image."""
        return torch.cat([self.image_transform(image) for image in images])  # (I, 3, S, S)

    def num_image_tokens(self, height: int, width: int) -> int:
        """Placeholder tokens for an image of this size (`image_tokens` unless images are tiled)."""
        if self.image_grid_pinpoints is None:
            return self.image_tokens
        tile = self.image_transform.image_size
        if tile % self.grid[0]:
            raise ValueError(f"image size {tile} is not a whole number of patches of the {self.grid} grid")
        return anyres_num_tokens(height, width, grid_pinpoints=self.image_grid_pinpoints, tile_size=tile,
                                 patch_size=tile // self.grid[0], convention=self.anyres_convention)

    def preprocess_anyres_images(self, images: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tiled images as transformers' LLaVA-NeXT processor gives them: float[I, P_max, 3, S, S]
        (base crop then tiles, short images padded with zero crops) and long[I, 2] (height, width)."""
        crops, sizes = anyres_batch(images, self.image_transform, grid_pinpoints=self.image_grid_pinpoints,
                                    tile_size=self.image_transform.image_size, convention=self.anyres_convention)
        most = max(c.shape[0] for c in crops)
        padded = torch.zeros((len(crops), most, *crops[0].shape[1:]), dtype=crops[0].dtype)  # (I, P_max, 3, S, S)
        for i, c in enumerate(crops):
            padded[i, :c.shape[0]] = c
        return padded, sizes

    # ----- the call -----------------------------------------------------------------------------

    def __call__(self, text: TextInput | Sequence[TextInput], images: Sequence[Any] | None = None,
                 videos: Sequence[Any] | None = None, *, padding: bool | str = True, padding_side: str | None = None,
                 max_length: int | None = None, truncation: bool = False, add_special_tokens: bool | None = None,
                 add_generation_prompt: bool = True) -> dict[str, Any]:
        """Tokenize prompts, expand their placeholders, and preprocess their media.

        Args:
            text: a prompt string, a conversation (list of messages, rendered with the chat
                template), or a list of either (one per sample).
            images: every image of the batch in prompt order (one per `<image>`).
            videos: every video of the batch in prompt order (one per `<video>`): paths, `VideoClip`s
                or uint8[T, H, W, 3] frames.
            padding: True / "longest", "max_length", or False (samples must then be of equal length).
            padding_side: "left" or "right" for this call (the processor's default otherwise).
            max_length: the longest allowed sequence, in tokens after expansion.
            truncation: cut text beyond `max_length` (never a visual span; that raises instead).
            add_special_tokens: add BOS etc.; default True for strings, False for rendered conversations
                (chat templates write their own).
            add_generation_prompt: for conversations, end with the assistant's turn opener.

        Returns:
            dict with `input_ids` long[B, L], `attention_mask` long[B, L], and `pixel_values`
            float[I, 3, S, S] and/or `pixel_values_videos` float[V, T, 3, S, S] when media is given.
            With `image_grid_pinpoints`, `pixel_values` is float[I, P_max, 3, S, S] (see
            `preprocess_anyres_images`) and `image_sizes` long[I, 2] is added.

        Raises:
            ValueError: when placeholders and media disagree in number, or when `max_length` would
                cut a visual span (the message gives the tokens needed and allowed).
        """
        samples = _as_samples(text)
        images, videos = list(images or []), list(videos or [])
        clips = [self.load_clip(video) for video in videos]
        video_frames = [torch.as_tensor(getattr(clip, "frames", clip)) for clip in clips]
        times = [self._frame_times(clip, i) for i, clip in enumerate(clips)]
        rendered, special = [], []
        for sample in samples:
            is_chat = not isinstance(sample, str)
            rendered.append(self.apply_chat_template(sample, add_generation_prompt=add_generation_prompt)
                            if is_chat else sample)
            special.append((not is_chat) if add_special_tokens is None else add_special_tokens)
        if self.time_instruction:
            rendered = self._add_time_instructions(rendered, clips, times)
        ids = [self.tokenizer(t, add_special_tokens=s)["input_ids"] for t, s in zip(rendered, special)]
        self._check_media_counts(ids, len(images), len(videos))
        counts = iter([self.video_span(frames.shape[0], t) for frames, t in zip(video_frames, times)])
        if images and self.image_grid_pinpoints is not None:
            pixel_values, image_sizes = self.preprocess_anyres_images(images)
            image_counts = iter([self.num_image_tokens(h, w) for h, w in image_sizes.tolist()])
        else:
            image_counts = iter([self.image_tokens] * len(images))
        spans = {self.image_token_id: image_counts, self.video_token_id: counts}  # iterators shared by the batch
        ids = [expand_placeholders(sample, spans)[0] for sample in ids]
        if max_length is not None:
            ids = [self._fit(sample, max_length, truncation, i) for i, sample in enumerate(ids)]
        out = self._pad(ids, padding, padding_side or self.padding_side, max_length)
        if images and self.image_grid_pinpoints is not None:
            out["pixel_values"], out["image_sizes"] = pixel_values, image_sizes
        elif images:
            out["pixel_values"] = self.preprocess_images(images)
        if videos:
            out["pixel_values_videos"] = self.preprocess_videos(video_frames)
        return out

    def batch_decode(self, ids: torch.Tensor, **kwargs: Any) -> list[str]:
        """`tokenizer.batch_decode`, skipping special tokens (placeholders included) by default."""
        kwargs.setdefault("skip_special_tokens", True)
        return self.tokenizer.batch_decode(ids, **kwargs)

    # ----- steps of the call --------------------------------------------------------------------

    def _check_media_counts(self, ids: list[list[int]], n_images: int, n_videos: int) -> None:
        for kind, token_id, given in (("image", self.image_token_id, n_images), ("video", self.video_token_id, n_videos)):
            found = sum(sample.count(token_id) for sample in ids)
            if found != given:
                token = self.image_token if kind == "image" else self.video_token
                raise ValueError(f"the prompts hold {found} {token} placeholders but {given} {kind}s were given; "
                                 f"give one {kind} per {token}, in prompt order")

    def _frame_times(self, clip: Any, index: int) -> list[float] | None:
        """Each frame's presentation time in seconds, when the prompt needs it (None otherwise)."""
        if not (self.time_instruction or self.time_markers):
            return None
        times = getattr(clip, "presentation_times", None)
        if not times:
            raise ValueError(f"video {index}: time_instruction / time_markers need the frames' presentation times; "
                             f"give the video as a path or a VideoClip, not bare frames")
        return list(times)

    def _add_time_instructions(self, texts: list[str], clips: list[Any], times: list[Any]) -> list[str]:
        """Each `<video>` followed by a line with its clip's time instruction, in prompt order."""
        if sum(t.count(self.video_token) for t in texts) != len(clips):
            return texts  # the count check that follows names the mismatch
        sentences = iter([time_instruction(clip.duration, t) for clip, t in zip(clips, times)])
        out = []
        for text in texts:
            pieces = text.split(self.video_token)
            out.append(pieces[0] + "".join(f"{self.video_token}\n{next(sentences)}{rest}" for rest in pieces[1:]))
        return out

    def _fit(self, ids: list[int], max_length: int, truncation: bool, index: int) -> list[int]:
        """Apply `max_length`: cut text only, on the tokenizer's truncation side."""
        if not truncation:
            return ids
        side = getattr(self.tokenizer, "truncation_side", "right")
        try:
            return ids[truncate(ids, max_length, (self.image_token_id, self.video_token_id), side=side)]
        except VisualSpanCut as cut:
            raise ValueError(
                f"sample {index} needs at least {cut.needed} tokens to keep its {cut.visual} visual tokens whole "
                f"({cut.length} in all), but max_length is {max_length}; truncation never cuts a visual span. "
                f"Raise max_length, or use fewer frames (num_frames) or a larger pool stride.") from None

    def _pad(self, ids: list[list[int]], padding: bool | str, side: str, max_length: int | None) -> dict[str, Any]:
        side = _check_side(side)
        longest = max(len(sample) for sample in ids)
        if padding in (True, "longest"):
            length = longest
        elif padding == "max_length":
            if max_length is None:
                raise ValueError("padding='max_length' needs max_length")
            length = max(max_length, longest)
        elif padding is False:
            if len({len(sample) for sample in ids}) > 1:
                raise ValueError(f"padding=False but the samples have lengths {[len(s) for s in ids]}")
            length = longest
        else:
            raise ValueError(f"padding must be True, 'longest', 'max_length' or False, got {padding!r}")
        input_ids = torch.full((len(ids), length), padding_id(self.tokenizer), dtype=torch.long)  # (B, L)
        attention_mask = torch.zeros((len(ids), length), dtype=torch.long)  # (B, L)
        for row, sample in enumerate(ids):
            span = slice(length - len(sample), length) if side == "left" else slice(0, len(sample))
            input_ids[row, span] = torch.tensor(sample, dtype=torch.long)
            attention_mask[row, span] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}


def _as_samples(text: Any) -> list[TextInput]:
    """One prompt or conversation -> a list of samples."""
    if isinstance(text, str):
        return [text]
    items = list(text)
    if not items:
        raise ValueError("text is empty: give a prompt, a conversation, or a list of them")
    if isinstance(items[0], Mapping):  # a single conversation
        return [items]
    for i, item in enumerate(items):
        if not isinstance(item, str) and not (isinstance(item, Sequence) and all(isinstance(m, Mapping) for m in item)):
            raise ValueError(f"text[{i}] must be a string or a list of chat messages, got {type(item).__name__}")
    return items


def _add_special_tokens(tokenizer: Any, tokens: Sequence[str]) -> list[str]:
    """Add each missing token as one special, unnormalised token; returns the ones added."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in tokens if t not in vocab]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
    for t in tokens:
        if len(tokenizer(t, add_special_tokens=False)["input_ids"]) != 1:
            raise ValueError(f"{t!r} is in the vocabulary but does not tokenize to a single id; "
                             f"it must be a special (added) token")
    return missing


def _check_side(side: str) -> str:
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
    return side
