"""CLIP image preprocessing on uint8 tensors: the tower's input, computed without PIL in the loop.

CLIP was trained on square crops: the short side resized to S with antialiased bicubic, the
centre S x S kept, then scaled to [0, 1] and normalised with CLIP's own mean and std. This module
reproduces transformers' `CLIPImageProcessor` exactly in its geometry (output size rule, crop
offset) and to within one grey level in its values, but works on whole batches of frames at once.

Why resize uint8 and not float: PyTorch's antialiased bicubic on a uint8 CPU tensor follows PIL's
fixed-point filter (same kernel, a = -0.5, width pass then height pass, rounding to uint8 between
them), and with a channels-last layout it takes a vectorised path that is several times faster than
PIL. A single float resize instead lets the bicubic lobes overshoot past 0 and 255 at sharp edges,
where PIL clamps after each pass. GPUs have no uint8 kernel, so there we resize in float one axis at
a time and round and clamp after each axis, as PIL does: the same values to within one grey level.

Two ways to make a non-square image square (`mode`):
  - "crop": shortest side to S, keep the centre (what CLIP, and LLaVA for video frames, does);
  - "pad": LLaVA-1.5's `expand2square`: paste the image centred on a square canvas of the mean
    colour, then resize to S x S, so nothing at the borders is lost.

Shapes: T frames (images), H/W pixels, S the output side.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

from video.frame_resize import pad_to_square, resize_uint8
from video.frame_scale import FrameScale, pad_offsets, shortest_edge_size
from vlm_vision.model.configs import CLIP_MEAN, CLIP_STD

__all__ = ["CLIPImageTransform", "as_frames"]

ImageInput = Union[PIL.Image.Image, np.ndarray, torch.Tensor, str, os.PathLike, Sequence[Any]]

MODES = ("crop", "pad")
_ACCEPTED = ("a PIL image, a path to an image file, numpy/torch uint8 [H, W], [H, W, 3], [T, H, W, 3] or "
             "[T, 3, H, W], or a list of these")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_PIL_BICUBIC = 3  # `resample` value of PIL.Image.BICUBIC in preprocessor configs


class CLIPImageTransform:
    """Images or frames -> float32[T, 3, S, S], normalised, as CLIP's tower expects.

    Tensors are processed on the device they live on (a CUDA tensor is resized on the GPU); PIL
    images, files and numpy arrays are processed on the CPU.

    Args:
        image_size: the output side S (336 for ViT-L/14@336, 224 for the others).
        mean: per-channel mean of [0, 1] pixels that is subtracted.
        std: per-channel standard deviation that is divided by.
        mode: "crop" (shortest side to S, centre crop) or "pad" (centre on a square canvas of the
            mean colour, then resize to S x S).

    Raises:
        ValueError: for an unknown mode, a non-positive size, or a mean/std that is not 3 numbers
            (std > 0).

    Example:
        >>> t = CLIPImageTransform(image_size=224)
        >>> t(np.zeros((480, 640, 3), np.uint8)).shape
        torch.Size([1, 3, 224, 224])
    """

    def __init__(self, image_size: int = 336, mean: Sequence[float] = CLIP_MEAN,
                 std: Sequence[float] = CLIP_STD, mode: str = "crop") -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std must be 3 numbers each (std > 0), got mean={mean}, std={std}")
        self.image_size = image_size
        self.mean = mean
        self.std = std
        self.mode = mode

    @classmethod
    def from_processor_config(cls, config: Mapping[str, Any] | str | os.PathLike,
                              mode: str = "crop") -> CLIPImageTransform:
        """Build the transform a checkpoint's `preprocessor_config.json` describes.

        Reads `crop_size` (int or {"height", "width"}), `size` (int or {"shortest_edge"}),
        `image_mean` and `image_std`; a missing mean/std means CLIP's.

        Args:
            config: the parsed dict, the JSON file, or a folder that holds `preprocessor_config.json`.
            mode: "crop" or "pad" (not part of the processor config; LLaVA chooses it per model).

        Raises:
            ValueError: if the config asks for something this transform does not do (non-square
                crop, a resize edge different from the crop, a filter other than bicubic, a rescale
                other than 1/255).
            FileNotFoundError: if the path does not exist.
        """
        if not isinstance(config, Mapping):
            path = Path(config)
            if path.is_dir():
                path = path / "preprocessor_config.json"
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
        side = _config_side(config.get("crop_size"), "crop_size")
        short = _config_side(config.get("size"), "size")
        if side is None and short is None:
            raise ValueError(f"preprocessor config has neither crop_size nor size: keys {sorted(config)}")
        if side is not None and short is not None and side != short:
            raise ValueError(f"size {config.get('size')!r} and crop_size {config.get('crop_size')!r} differ: "
                             f"this transform resizes the shortest edge to the crop size")
        resample = config.get("resample", _PIL_BICUBIC)
        if resample != _PIL_BICUBIC:
            raise ValueError(f"resample={resample!r} is not supported; only bicubic ({_PIL_BICUBIC})")
        rescale = config.get("rescale_factor", 1 / 255)
        if abs(float(rescale) - 1 / 255) > 1e-9:
            raise ValueError(f"rescale_factor={rescale!r} is not supported; only 1/255")
        return cls(image_size=side if side is not None else short,
                   mean=config.get("image_mean", CLIP_MEAN), std=config.get("image_std", CLIP_STD), mode=mode)

    @property
    def fill(self) -> tuple[int, int, int]:
        """The uint8 colour "pad" mode fills with: int(mean * 255), (122, 116, 104) for CLIP."""
        return tuple(int(m * 255) for m in self.mean)

    def frame_scale(self) -> FrameScale:
        """The `video.FrameScale` that has the decoder process do this transform's resize
        (`video.load_video(..., frame_scale=...)`): frames arrive at this transform's size."""
        return FrameScale(self.image_size, self.mode, self.fill)

    def __repr__(self) -> str:
        return (f"CLIPImageTransform(image_size={self.image_size}, mean={self.mean}, std={self.std}, "
                f"mode={self.mode!r})")

    def __call__(self, images: ImageInput) -> torch.Tensor:
        """Preprocess one image, a list of images, or a clip of frames.

        Args:
            images: a PIL image (any mode; transparency is composited onto white, 16-bit grey is
                scaled to 8 bits), a path to an image file, numpy or torch uint8 [H, W] (grey),
                [H, W, 3], [T, H, W, 3] or [T, 3, H, W] (channels last wins if both dims are 3),
                or a list of any of these (sizes may differ).

        Returns:
            float32[T, 3, S, S] on the input's device (CPU for PIL, files and numpy); T = 1 for a
            single image.

        Raises:
            TypeError: for an unsupported type or dtype.
            ValueError: for a bad layout, an empty image or list, or a file that is not a
                readable image (including decompression bombs).
        """
        groups = as_frames(images)  # list of uint8[t, 3, H, W]
        device = groups[0].device
        for g in groups:
            if g.device != device:
                raise ValueError(f"all tensors in a list must be on one device, got {device} and {g.device}")
        return self._normalize(self._square_all(groups))  # (T, 3, S, S)

    # ----- steps --------------------------------------------------------------------------------

    def _square_all(self, groups: list[torch.Tensor]) -> torch.Tensor:
        """Frame groups of any sizes -> uint8[T, 3, S, S] in input order, one resize call per size."""
        if len(groups) == 1:
            return self._square_uint8(groups[0])
        s = self.image_size
        starts = np.cumsum([0] + [g.shape[0] for g in groups]).tolist()
        out = torch.empty((starts[-1], 3, s, s), dtype=torch.uint8, device=groups[0].device)  # (T, 3, S, S)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, g in enumerate(groups):
            by_size.setdefault(tuple(g.shape[-2:]), []).append(i)
        for members in by_size.values():
            squared = self._square_uint8(torch.cat([groups[i] for i in members]))  # (t, 3, S, S)
            k = 0
            for i in members:
                n = starts[i + 1] - starts[i]
                out[starts[i]:starts[i + 1]] = squared[k:k + n]
                k += n
        return out

    def _square_uint8(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8[t, 3, H, W] of one size -> uint8[t, 3, S, S] (resize + crop, or pad + resize)."""
        s = self.image_size
        if self.mode == "pad":
            frames = _pad_to_square(frames, self.fill)  # (t, 3, M, M)
            return resize_uint8(frames, (s, s))  # (t, 3, S, S)
        h, w = frames.shape[-2:]
        new_h, new_w = _shortest_edge_size(h, w, s)
        frames = resize_uint8(frames, (new_h, new_w))  # (t, 3, h', w')
        return _center_crop(frames, s)  # (t, 3, S, S)

    def _normalize(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8[T, 3, S, S] -> float32 (x / 255 - mean) / std, as one multiply and one add."""
        std = torch.tensor(self.std, dtype=torch.float64)
        scale = (1.0 / (255.0 * std)).to(torch.float32)
        shift = (-torch.tensor(self.mean, dtype=torch.float64) / std).to(torch.float32)
        x = frames.to(torch.float32, memory_format=torch.contiguous_format)  # (T, 3, S, S)
        x.mul_(scale.to(x.device).view(1, 3, 1, 1)).add_(shift.to(x.device).view(1, 3, 1, 1))  # (1, 3, 1, 1)
        return x


def _config_side(value: Any, key: str) -> int | None:
    """A processor config's `size` / `crop_size` (int, {"shortest_edge"} or square {"height", "width"}) -> side."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, Mapping):
        if set(value) == {"shortest_edge"}:
            return int(value["shortest_edge"])
        if set(value) == {"height", "width"}:
            if value["height"] != value["width"]:
                raise ValueError(f"{key}={dict(value)!r} is not square (height != width); this transform makes "
                                 f"square S x S inputs")
            return int(value["height"])
    raise ValueError(f"cannot read {key}={value!r}: expected an int, {{'shortest_edge': S}} or "
                     f"{{'height': S, 'width': S}}")


# ----- geometry (pure functions of sizes) -------------------------------------------------------

def _crop_offset(length: int, s: int) -> int:
    """Start of the centre crop: floor((length - s) / 2), transformers' rule (torchvision rounds)."""
    return (length - s) // 2


# one rule for this transform and for the decoder process, which does its resize (`video.frame_scale`)
_shortest_edge_size = shortest_edge_size
_pad_offsets = pad_offsets
_pad_to_square = pad_to_square


# ----- tensor steps -----------------------------------------------------------------------------

def _center_crop(frames: torch.Tensor, s: int) -> torch.Tensor:
    """uint8[t, 3, h, w] (both >= s) -> the centre uint8[t, 3, s, s] (a view)."""
    h, w = frames.shape[-2:]
    top, left = _crop_offset(h, s), _crop_offset(w, s)
    return frames[:, :, top:top + s, left:left + s]  # (t, 3, s, s)


# ----- input conversion (the I/O boundary) ------------------------------------------------------

def as_frames(images: ImageInput) -> list[torch.Tensor]:
    """Any accepted input -> a list of uint8[t, 3, H, W] tensors (t >= 1, H, W >= 1)."""
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError(f"got an empty {type(images).__name__}; expected {_ACCEPTED}")
        out = []
        for i, item in enumerate(images):
            if isinstance(item, (list, tuple)):
                raise TypeError(f"item {i} of the list is a nested {type(item).__name__}; expected {_ACCEPTED}")
            out.extend(as_frames(item))
        return out
    if isinstance(images, (str, os.PathLike)):
        return [_pil_to_frames(_open_image(Path(images)), source=str(images))]
    if isinstance(images, PIL.Image.Image):
        return [_pil_to_frames(images, source=f"PIL image mode={images.mode!r} size={images.size}")]
    if isinstance(images, np.ndarray):
        return [_tensor_to_frames(_numpy_to_tensor(images), kind="numpy array")]
    if isinstance(images, torch.Tensor):
        return [_tensor_to_frames(images, kind="torch tensor")]
    raise TypeError(f"cannot preprocess a {type(images).__name__}; expected {_ACCEPTED}")


def _open_image(path: Path) -> PIL.Image.Image:
    """Open and decode an image file, upright; anything unreadable (or a decompression bomb) is a ValueError.

    Phones store photos as the sensor saw them and an EXIF orientation tag that says how to turn
    them; the tag is applied, as transformers' `load_image` does.
    """
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            image = PIL.Image.open(path)
            image.load()
            image = PIL.ImageOps.exif_transpose(image)  # corrupt EXIF: a warning, the image as stored
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as e:
        raise ValueError(f"refusing {path}: too many pixels for PIL's decompression-bomb limit "
                         f"({PIL.Image.MAX_IMAGE_PIXELS} pixels): {e}") from e
    except (PIL.UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"cannot read {path} as an image ({type(e).__name__}: {e}); expected an image file "
                         f"PIL can decode (JPEG, PNG, ...)") from e
    return image


def _pil_to_frames(image: PIL.Image.Image, *, source: str) -> torch.Tensor:
    """A PIL image of any usual mode -> uint8[1, 3, H, W] (RGB).

    Transparent pixels are composited onto white (what transformers' processor does), 16-bit grey
    is scaled to 8 bits (PIL's own conversion would saturate everything above 255).
    """
    w, h = image.size
    if w == 0 or h == 0:
        raise ValueError(f"empty image ({source}): width={w}, height={h}; an image needs at least one pixel")
    if image.mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(image).astype(np.uint32)  # (H, W) 0..65535
        array = ((grey * 255 + 32767) // 65535).astype(np.uint8)  # (H, W) rounded to 0..255
    elif image.mode in ("I", "F"):
        raise ValueError(f"{source}: mode {image.mode!r} has no fixed value range, so it cannot be mapped to "
                         f"8 bits unambiguously; convert it to 'L', 'I;16' or 'RGB' first")
    elif "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        array = np.array(PIL.Image.alpha_composite(white, rgba).convert("RGB"))  # (H, W, 3)
    else:
        array = np.array(image.convert("RGB"))  # (H, W, 3)
    return _tensor_to_frames(torch.from_numpy(array), kind=source)


def _numpy_to_tensor(array: np.ndarray) -> torch.Tensor:
    if array.dtype != np.uint8:
        raise TypeError(f"numpy array has dtype {array.dtype}; expected uint8 pixels 0..255 "
                        f"(layouts [H, W], [H, W, 3], [T, H, W, 3], [T, 3, H, W])")
    array = np.ascontiguousarray(array)
    if not array.flags.writeable:  # torch.from_numpy warns on read-only memory
        array = array.copy()
    return torch.from_numpy(array)


def _tensor_to_frames(x: torch.Tensor, *, kind: str) -> torch.Tensor:
    """uint8 [H, W], [H, W, 3], [T, H, W, 3] or [T, 3, H, W] -> uint8[T, 3, H, W] (a view where possible)."""
    if x.dtype != torch.uint8:
        raise TypeError(f"{kind} has dtype {x.dtype}; expected uint8 pixels 0..255 "
                        f"(layouts [H, W], [H, W, 3], [T, H, W, 3], [T, 3, H, W])")
    shape = list(x.shape)
    if x.ndim == 2:
        frames = x[None, None].expand(1, 3, *shape)  # (1, 3, H, W), grey repeated
    elif x.ndim == 3 and shape[2] == 3:
        frames = x.permute(2, 0, 1)[None]  # (1, 3, H, W)
    elif x.ndim == 4 and shape[3] == 3:
        frames = x.permute(0, 3, 1, 2)  # (T, 3, H, W)
    elif x.ndim == 4 and shape[1] == 3:
        frames = x  # (T, 3, H, W)
    else:
        raise ValueError(f"{kind} has shape {shape}; expected [H, W], [H, W, 3], [T, H, W, 3] or [T, 3, H, W]")
    if frames.numel() == 0:
        raise ValueError(f"{kind} has shape {shape}: no pixels (every frame needs H, W >= 1 and T >= 1)")
    return frames
