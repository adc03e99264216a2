"""Fusion: visual tokens placed into a causal LM's input embeddings, the transformers way.

The prompt already holds one placeholder token per visual token (`VisionLanguageProcessor` expands
each `<image>` / `<video>` to the exact count). The model embeds the prompt, computes the visual
tokens, and writes them over the placeholder rows with one `masked_scatter`. The sequence length
never changes inside the model, so padding, attention masks and labels stay aligned with what the
tokenizer produced, and a placeholder/feature count mismatch is an error at the boundary instead of
a silent shift. (LLaVA's own code expands a single `-200` id inside the model and re-pads every
batch; transformers' current LLaVA classes use the convention followed here.)

Images follow LLaVA-1.5: tower -> projector, 576 tokens for a 336 px image (24 x 24 patches).
With `image_grid_pinpoints` set they follow LLaVA-NeXT's "anyres" scheme instead (`vlm_vision.model.anyres`):
each image arrives as a base crop plus a grid of tiles, and its token count depends on its size
(`image_sizes` must come with `pixel_values`), e.g. 2340 tokens for a 480 x 640 image.

Videos follow LLaVA-NeXT-Video v1 and transformers' `LlavaNextVideoForConditionalGeneration`:
frames are folded into the batch, encoded by the tower, pooled on the tower's patch grid (2 x 2
average: 24 x 24 -> 12 x 12 = 144 tokens per frame), projected, then unfolded. Pooling happens
*before* the projector, on tower features; later LLaVA-NeXT code (OneVision, LLaVA-Video) pools
after it, which is a different model because the MLP is nonlinear. `video_features` lets a caller
skip the tower with tokens precomputed by `vlm-vision extract` (the same pooled tower features).

Frames are concatenated in temporal order, row-major within a frame; `video_newline` optionally
adds LLaVA-NeXT's learned `image_newline` embedding once at the end (`one_token`), after every frame
(`frame`) or after every row of every frame (`grid`). transformers and NeXT-Video v1 add none.

Two later LLaVA-Video options, both off by default (LLaVA-NeXT-Video uses neither): a token budget
per video (`max_video_tokens`) and SlowFast (`faster_token_stride`); `vlm_vision.model.video_tokens` says how.

Each step is a small function in `vlm_vision.model.fusion_steps` (encode, project, splice, mask labels at
visual positions, position ids from the attention mask); this module is the model that runs them.

Shapes: B batch, L sequence, I images, V videos, T frames, S image side, N tokens per image or
frame (N' after pooling), D_v tower width, D LLM width, M visual tokens.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from projector.builders import build_projector
from projector.checkpoints import load_projector
from video.budget import VideoLayout
from video.pooling import check_pooling
from vlm_vision.model.anyres import BASE_RESOLUTION, anyres_num_tokens, check_pinpoints, encode_anyres_images
from vlm_vision.model.fusion_steps import (
    Videos,
    check_input_ids,
    check_media,
    encode_images,
    feature_list,
    mask_labels,
    position_ids_from_mask,
    project,
    splice,
    video_tower_features,
)
from vlm_vision.model.interchange import save_transformers, transformers_parts
from vlm_vision.model.llava_checkpoint import llava_checkpoint_parts
from vlm_vision.model.parts import ModelParts
from vlm_vision.model.tower import CLIPVisionTower
from vlm_vision.model.video_tokens import VIDEO_NEWLINES, arrange_video_tokens, pool_video

__all__ = ["VisionLanguageModel"]


def _linear_widths(projector: nn.Module) -> tuple[int, int] | None:
    """(input width, output width) of a projector's first and last linear layers; None without any."""
    linears = [m for m in projector.modules() if isinstance(m, nn.Linear)]
    return (linears[0].in_features, linears[-1].out_features) if linears else None


def _learned_token(init: torch.Tensor | None, embedding: torch.Tensor, name: str) -> nn.Parameter:
    """A learned float[D] token (`image_newline`, `faster_token`) on the LLM embedding's device and dtype;
    random with std 1/sqrt(D) when `init` is None."""
    width = embedding.shape[1]
    if init is None:
        init = torch.randn(width) / math.sqrt(width)
    if tuple(init.shape) != (width,):
        raise ValueError(f"{name} must have shape ({width},), got {tuple(init.shape)}")
    return nn.Parameter(init.detach().to(device=embedding.device, dtype=embedding.dtype))


# ----- the model ----------------------------------------------------------------------------------


class VisionLanguageModel(nn.Module):
    """A CLIP tower, a projector and any Hugging Face causal LM, fused by placeholder tokens.

    Args:
        tower: the vision tower (frozen by default).
        projector: tower width -> LLM width (see `projector.build_projector`).
        llm: a transformers causal LM (Llama, Mistral, Qwen2, ...).
        image_token_id: the `<image>` placeholder id, or None for a model without images.
        video_token_id: the `<video>` placeholder id, or None for a model without videos.
        pool_stride: spatial pooling stride on the tower's patch grid for videos.
        pool_mode: pooling mode for videos ("average" as released).
        video_newline: "no_token" (transformers, NeXT-Video v1), "one_token", "frame" or "grid".
        image_newline: float[D], initial `image_newline` embedding (random, std 1/sqrt(D), when None).
        image_grid_pinpoints: LLaVA-NeXT anyres canvases for images (multiples of the tower's image
            size, e.g. `vlm_vision.model.anyres.DEFAULT_PINPOINTS`), or None for one crop per image (LLaVA-1.5).
        anyres_convention: "transformers" (pinpoints as [height, width], rounded unpadding) or
            "llava" (LLaVA's original code); see `vlm_vision.model.anyres`.
        faster_token_stride: SlowFast (LLaVA-Video's `add_faster_video`): frames 0, k, 2k, ... pool at
            `pool_stride`, the others at twice it, each frame followed by `faster_token`. None: off.
        faster_token: float[D], initial `faster_token` (random, std 1/sqrt(D), when None and SlowFast is on).
        max_video_tokens: token budget per video; a longer video pools at up to twice `pool_stride`
            (`video.budget`). None: always `pool_stride`.

    Example:
        >>> model = VisionLanguageModel(tower, build_projector("mlp2x_gelu", 1024, 4096), llm,
        ...                             image_token_id=32001, video_token_id=32000)
        >>> out = model(input_ids, attention_mask=mask, pixel_values_videos=frames)  # frames (1, 32, 3, 336, 336)
    """

    def __init__(self, tower: CLIPVisionTower, projector: nn.Module, llm: nn.Module, *,
                 image_token_id: int | None, video_token_id: int | None, pool_stride: int = 2,
                 pool_mode: str = "average", video_newline: str = "no_token",
                 image_newline: torch.Tensor | None = None,
                 image_grid_pinpoints: Sequence[Sequence[int]] | None = None,
                 anyres_convention: str = "transformers", faster_token_stride: int | None = None,
                 faster_token: torch.Tensor | None = None, max_video_tokens: int | None = None):
        super().__init__()
        if video_newline not in VIDEO_NEWLINES:
            raise ValueError(f"unknown video_newline {video_newline!r}; choose from {VIDEO_NEWLINES}")
        if image_token_id is not None and image_token_id == video_token_id:
            raise ValueError(f"image_token_id and video_token_id must differ, both are {image_token_id}")
        embeddings = llm.get_input_embeddings()
        width = embeddings.embedding_dim
        widths = _linear_widths(projector)
        if widths is not None and widths != (tower.hidden_size, width):
            raise ValueError(f"projector maps {widths[0]} -> {widths[1]}, but the tower gives {tower.hidden_size} "
                             f"and the LLM embeds in {width}")
        self.tower, self.projector, self.llm = tower, projector, llm
        self.image_token_id, self.video_token_id = image_token_id, video_token_id
        check_pooling(tower.grid_size, pool_stride, pool_mode, of_tower=True)
        self.pool_stride, self.pool_mode = pool_stride, pool_mode
        self.video_newline = video_newline
        self.faster_token_stride = faster_token_stride
        self.max_video_tokens = max_video_tokens
        self.video_layout  # validates SlowFast and the budget against the grid
        self.image_grid_pinpoints = check_pinpoints(image_grid_pinpoints, tower.image_size, anyres_convention)
        self.anyres_convention = anyres_convention
        self.image_newline = _learned_token(image_newline, embeddings.weight, "image_newline")
        self.faster_token = None
        if faster_token_stride is not None:
            self.faster_token = _learned_token(faster_token, embeddings.weight, "faster_token")
        elif faster_token is not None:
            raise ValueError("a faster_token was given but faster_token_stride is None (SlowFast off)")

    # ----- token counts -------------------------------------------------------------------------

    @property
    def pooled_grid(self) -> tuple[int, int]:
        """Rows and columns of a video frame's token grid after pooling, e.g. (12, 12)."""
        return self.video_layout.pooled_grid(self.pool_stride)

    @property
    def image_tokens(self) -> int:
        """Placeholder tokens per image (576 for ViT-L/14@336); for anyres, per crop (see `num_image_tokens`)."""
        return self.tower.num_patches

    def num_image_tokens(self, height: int, width: int) -> int:
        """Placeholder tokens for an image of this size: `image_tokens`, or the anyres count
        (480 x 640 with LLaVA-NeXT's pinpoints: 2340)."""
        if self.image_grid_pinpoints is None or (height, width) == BASE_RESOLUTION:
            return self.image_tokens
        return anyres_num_tokens(height, width, grid_pinpoints=self.image_grid_pinpoints,
                                 tile_size=self.tower.image_size, patch_size=self.tower.patch_size,
                                 convention=self.anyres_convention)

    @property
    def video_layout(self) -> VideoLayout:
        """The video-token settings (grid, pooling, newlines, SlowFast, budget) as one `VideoLayout`."""
        return VideoLayout(grid=tuple(self.tower.grid_size), pool_stride=self.pool_stride, pool_mode=self.pool_mode,
                           newline=self.video_newline, faster_token_stride=self.faster_token_stride,
                           max_video_tokens=self.max_video_tokens)

    def video_tokens(self, num_frames: int) -> int:
        """Placeholder tokens for a video of `num_frames` frames (32 frames, stride 2: 4608)."""
        return self.video_layout.video_tokens(num_frames)

    # ----- visual tokens ------------------------------------------------------------------------

    def image_features(self, pixel_values: torch.Tensor | Sequence[torch.Tensor],
                       image_sizes: torch.Tensor | None = None) -> torch.Tensor:
        """Projected tokens of all images, concatenated in order: float[I*N, D].

        For anyres models, `pixel_values` are each image's crops (a list of float[P_i, 3, S, S], or
        float[I, P_max, 3, S, S] padded with zero crops as transformers' processor gives them), and
        `image_sizes` long[I, 2] their (height, width); the result is float[sum M_i, D].
        """
        if self.image_grid_pinpoints is None:
            features = encode_images(self.tower, pixel_values)  # (I, N, D_v)
            return project(self.projector, features).flatten(0, 1)  # (I*N, D)
        if image_sizes is None:
            raise ValueError("this model tiles images (anyres): pass image_sizes, long[I, 2] of (height, width), "
                             "with pixel_values")
        per_image = encode_anyres_images(self.tower, self.projector, pixel_values, image_sizes, self.image_newline,
                                         grid_pinpoints=self.image_grid_pinpoints, convention=self.anyres_convention)
        return torch.cat(per_image)  # (sum M_i, D)

    def video_features(self, pixel_values_videos: Videos | None = None,
                       video_features: Videos | None = None) -> list[torch.Tensor]:
        """Projected tokens of each video in sequence order (newlines included): V x float[M_v, D].

        Give either frames (`pixel_values_videos`, float[V, T, 3, S, S] or a list of float[T, 3, S, S])
        or pooled tower tokens from extraction (`video_features`, float[V, T, N', D_v] or a list of
        float[T, N', D_v]).
        """
        if (pixel_values_videos is None) == (video_features is None):
            raise ValueError("give exactly one of pixel_values_videos and video_features")
        layout = self.video_layout
        if pixel_values_videos is not None:
            per_video, pooled = video_tower_features(self.tower, pixel_values_videos), False  # V x (T, N, D_v)
        else:
            per_video, pooled = feature_list(video_features), True  # V x (T, N', D_v)
        out = []
        for v, clip in enumerate(per_video):
            stride = layout.stride_for(clip.shape[0])
            slow, fast = pool_video(clip, layout, stride, pooled=pooled, name=f"video {v}")
            out.append(arrange_video_tokens(
                project(self.projector, slow), None if fast is None else project(self.projector, fast),
                self.image_newline, slow_grid=layout.pooled_grid(stride), fast_grid=layout.pooled_grid(2 * stride),
                layout=self.video_newline, faster_token=self.faster_token,
                faster_token_stride=self.faster_token_stride))  # (M_v, D)
        return out

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
              pixel_values_videos: Videos | None = None, video_features: Videos | None = None,
              image_sizes: torch.Tensor | None = None) -> torch.Tensor:
        """The LLM's input embeddings float[B, L, D] with every placeholder replaced by its visual token.

        Raises:
            ValueError: when placeholders and visual tokens disagree in number (both counts given),
                when placeholders have no media, or when an id is outside the LLM's vocabulary.
        """
        check_input_ids(input_ids, self.llm.get_input_embeddings().num_embeddings)
        embeds = self.llm.get_input_embeddings()(input_ids)  # (B, L, D)
        if pixel_values is not None or self._has(input_ids, self.image_token_id):
            check_media(self.image_token_id, pixel_values, input_ids, "image")
            features = self.image_features(pixel_values, image_sizes)  # (I*N, D), anyres (sum M_i, D)
            what = f"{len(pixel_values)} images ({self.image_tokens} tokens per image)"
            if self.image_grid_pinpoints is not None:
                counts = [self.num_image_tokens(int(h), int(w)) for h, w in image_sizes]
                what = f"{len(counts)} anyres images of sizes {[tuple(map(int, hw)) for hw in image_sizes]} " \
                       f"(tokens per image: {counts})"
            embeds = splice(embeds, input_ids, self.image_token_id, features, what=what)
        if pixel_values_videos is not None or video_features is not None or self._has(input_ids, self.video_token_id):
            media = pixel_values_videos if pixel_values_videos is not None else video_features
            check_media(self.video_token_id, media, input_ids, "video")
            per_video = self.video_features(pixel_values_videos, video_features)  # V x (M_v, D)
            what = f"{len(per_video)} videos (tokens per video: {[clip.shape[0] for clip in per_video]})"
            embeds = splice(embeds, input_ids, self.video_token_id, torch.cat(per_video), what=what)  # (sum M_v, D)
        if self.training:
            ran = pixel_values is not None or pixel_values_videos is not None or video_features is not None
            embeds = embeds + self._zero_vision_term(ran)  # (B, L, D), values unchanged
        return embeds

    def _zero_vision_term(self, ran_vision: bool) -> torch.Tensor:
        """0 x every vision-side tensor this batch may not have used: the stand-in for missing media.

        Training on several processes needs every process to run the same sharded modules and give
        every trainable tensor a gradient (FSDP reduce-scatters each unit's gradients as one buffer;
        ZeRO-3 gathers the tower's weights as it runs), also when its batch holds no media (the tower
        and projector then run on one zero image) or media that skip the newline. Its value is 0, so
        the loss and every gradient are exactly those without it.
        """
        term = self.image_newline.sum() * 0
        if self.faster_token is not None:
            term = term + self.faster_token.sum() * 0
        if not ran_vision:
            weight = next(self.tower.parameters())
            side = self.tower.image_size
            pixels = torch.zeros(1, 3, side, side, device=weight.device, dtype=weight.dtype)  # (1, 3, S, S)
            term = term + project(self.projector, encode_images(self.tower, pixels)).sum() * 0
        return term

    # ----- forward and generate -----------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, pixel_values_videos: Videos | None = None,
                video_features: Videos | None = None, labels: torch.Tensor | None = None,
                image_sizes: torch.Tensor | None = None, **llm_kwargs: Any) -> Any:
        """Run the LLM on the prompt with its visual tokens in place.

        Args:
            input_ids: long[B, L], one placeholder per visual token.
            attention_mask: long[B, L] (or longer, covering cached tokens), 1 for real tokens.
            pixel_values: float[I, 3, S, S], the images in prompt order.
            pixel_values_videos: float[V, T, 3, S, S] (or a list of float[T, 3, S, S]) in prompt order.
            video_features: pooled tower tokens instead of frames, float[V, T, N', D_v] or a list.
            labels: long[B, L]; visual positions are set to -100 before the loss.
            image_sizes: long[I, 2], each image's (height, width); needed by anyres models, whose
                `pixel_values` are each image's crops (see `image_features`).
            **llm_kwargs: passed to the LLM (`past_key_values`, `use_cache`, `position_ids`, ...).

        Returns:
            The LLM's output (`.logits` float[B, L, vocab], `.loss` when labels are given).
        """
        embeds = self.embed(input_ids, pixel_values, pixel_values_videos, video_features, image_sizes)  # (B, L, D)
        if labels is not None:
            labels = mask_labels(labels, input_ids, self.placeholder_ids())
        if attention_mask is not None and "position_ids" not in llm_kwargs:
            llm_kwargs["position_ids"] = position_ids_from_mask(attention_mask, input_ids.shape[1])
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **llm_kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 pixel_values: torch.Tensor | None = None, pixel_values_videos: Videos | None = None,
                 video_features: Videos | None = None, image_sizes: torch.Tensor | None = None,
                 **generate_kwargs: Any) -> torch.Tensor:
        """Generate an answer; returns long[B, L + new] (the prompt, then the new tokens), like
        transformers' decoder-only models. `generate_kwargs` go to the LLM's `generate`
        (`max_new_tokens`, `do_sample`, ...). Batches should be left-padded.
        """
        embeds = self.embed(input_ids, pixel_values, pixel_values_videos, video_features, image_sizes)  # (B, L, D)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.llm.generate(input_ids=input_ids, inputs_embeds=embeds, attention_mask=attention_mask,
                                 **generate_kwargs)

    # ----- construction -------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, llm: str | os.PathLike | nn.Module, tower: str | os.PathLike | CLIPVisionTower,
                        projector: str | os.PathLike | dict | nn.Module | None = None, *,
                        image_token_id: int | None, video_token_id: int | None,
                        projector_kind: str = "mlp2x_gelu", select_layer: int = -2, select_feature: str = "patch",
                        pool_stride: int = 2, pool_mode: str = "average", video_newline: str = "no_token",
                        dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                        faster_token_stride: int | None = None,
                        max_video_tokens: int | None = None) -> "VisionLanguageModel":
        """Assemble a model from an LLM, a tower and (optionally) trained projector weights.

        Args:
            llm: a transformers causal LM, or its Hub id / folder (`AutoModelForCausalLM`).
            tower: a `CLIPVisionTower`, or anything `CLIPVisionTower.from_pretrained` reads.
            projector: None for a fresh `projector_kind` projector, weights for `load_projector`
                (`mm_projector.bin`, `.safetensors`, a state dict), or a built module.
            image_token_id: the `<image>` placeholder id (`VisionLanguageProcessor` gives it).
            video_token_id: the `<video>` placeholder id.
            projector_kind: the projector to build when `projector` holds no module (`build_projector`).
            select_layer: the tower's feature layer.
            select_feature: "patch" or "cls_patch".
            pool_stride: the videos' spatial pooling stride.
            pool_mode: "average", "max" or "bilinear".
            video_newline: the video newline layout ("no_token", "one_token", "frame", "grid").
            dtype: the dtype of the assembled model.
            device: where the assembled model lives.
            faster_token_stride: SlowFast: every k-th frame at the fine stride (None: off).
            max_video_tokens: the token budget per video (None: none).
        """
        if not isinstance(llm, nn.Module):
            llm = AutoModelForCausalLM.from_pretrained(llm, dtype=dtype)
        if not isinstance(tower, CLIPVisionTower):
            tower = CLIPVisionTower.from_pretrained(tower, select_layer=select_layer, select_feature=select_feature)
        if not isinstance(projector, nn.Module):
            weights = projector
            projector = build_projector(projector_kind, tower.hidden_size, llm.get_input_embeddings().embedding_dim)
            if weights is not None:
                load_projector(projector, weights)
        model = cls(tower, projector, llm, image_token_id=image_token_id, video_token_id=video_token_id,
                    pool_stride=pool_stride, pool_mode=pool_mode, video_newline=video_newline,
                    faster_token_stride=faster_token_stride, max_video_tokens=max_video_tokens)
        return model.to(device=device, dtype=dtype)

    @classmethod
    def from_parts(cls, parts: ModelParts) -> "VisionLanguageModel":
        """Assemble the parts a converter read (`vlm_vision.model.interchange`, `vlm_vision.model.llava_checkpoint`)."""
        return cls(parts.tower, parts.projector, parts.llm, **parts.settings)

    @classmethod
    def from_llava_next_video(cls, model_or_path: Any, *, dtype: torch.dtype | None = None) -> "VisionLanguageModel":
        """Convert a transformers `LlavaNextVideoForConditionalGeneration` (object or folder); see
        `vlm_vision.model.interchange.transformers_parts`."""
        return cls.from_parts(transformers_parts(model_or_path, kind="llava_next_video", dtype=dtype))

    @classmethod
    def from_llava(cls, model_or_path: Any, *, dtype: torch.dtype | None = None) -> "VisionLanguageModel":
        """Convert a transformers `LlavaForConditionalGeneration` (LLaVA-1.5; object or folder)."""
        return cls.from_parts(transformers_parts(model_or_path, kind="llava", dtype=dtype))

    @classmethod
    def from_llava_next(cls, model_or_path: Any, *, dtype: torch.dtype | None = None) -> "VisionLanguageModel":
        """Convert a transformers `LlavaNextForConditionalGeneration` (LLaVA-NeXT anyres images; object
        or folder)."""
        return cls.from_parts(transformers_parts(model_or_path, kind="llava_next", dtype=dtype))

    @classmethod
    def from_llava_checkpoint(cls, path: str | os.PathLike, **kwargs: Any) -> "VisionLanguageModel":
        """Read an original LLaVA / LLaVA-NeXT(-Video) checkpoint folder; see
        `vlm_vision.model.llava_checkpoint.llava_checkpoint_parts` for the arguments."""
        return cls.from_parts(llava_checkpoint_parts(path, **kwargs))

    def save_llava_next_video(self, path: str | os.PathLike, **kwargs: Any) -> None:
        """Write a folder `LlavaNextVideoForConditionalGeneration.from_pretrained` loads."""
        save_transformers(self, path, kind="llava_next_video", **kwargs)

    def save_llava(self, path: str | os.PathLike, **kwargs: Any) -> None:
        """Write a folder `LlavaForConditionalGeneration.from_pretrained` loads (images only)."""
        save_transformers(self, path, kind="llava", **kwargs)

    def save_llava_next(self, path: str | os.PathLike, **kwargs: Any) -> None:
        """Write a folder `LlavaNextForConditionalGeneration.from_pretrained` loads (anyres images)."""
        save_transformers(self, path, kind="llava_next", **kwargs)

    # ----- checks -------------------------------------------------------------------------------

    def placeholder_ids(self) -> list[int]:
        """The `<image>`/`<video>` ids this model splices at (labels there never train)."""
        return [i for i in (self.image_token_id, self.video_token_id) if i is not None]

    @staticmethod
    def _has(input_ids: torch.Tensor, token_id: int | None) -> bool:
        return token_id is not None and bool((input_ids == token_id).any())
