"""LLaVA-NeXT "anyres" images: a high-resolution image as a grid of tower-sized tiles.

A CLIP tower sees S x S pixels (S = 336). To show it a larger image without squashing it, LLaVA-NeXT
picks a canvas from a short list of "pinpoints" (multiples of S, e.g. 672 x 672 = 2 x 2 tiles), fits the
image into it keeping its aspect ratio, pads the rest black, and cuts the canvas into S x S tiles. The
whole image squashed to S x S (the "base" image) goes first, for context. Each crop is encoded on its
own; the tile features are stitched back into one feature map, the rows and columns that only saw
padding are cut off again ("unpad"), and a learned `image_newline` vector ends every row so the LLM can
tell where a row stops. An image therefore costs g*g base tokens (g = S / patch, 24 for CLIP-L/14@336)
plus rows * (cols + 1) grid tokens, which depends on its size: 1176 tokens for a 336 x 336 image,
2928 for 800 x 800.

How the canvas is chosen: the pinpoint that keeps the most of the image's pixels after fitting
(`min(fitted area, original area)`, so upscaling earns nothing) and, among equals, wastes the least
canvas area; the first one listed wins a full tie.

Two conventions (`convention=`), because the reference implementations disagree:
  - "transformers" (default): pinpoints are read as [height, width]; unpadding rounds
    `int(round(x, 7))`. Checkpoints converted to transformers are what users load, and token counts
    must match its processor, so this is the default.
  - "llava": LLaVA's original code reads the same list as [width, height] and truncates with
    `int(x)` when unpadding.
  The default pinpoint list holds every shape in both orientations, so the two choose the same canvas
  except on ties: an image no larger than S x S fits 336 x 672 and 672 x 336 equally well, and
  transformers takes 1 row x 2 columns where LLaVA takes 2 rows x 1 column. Square images still get
  the same number of tokens, other small images do not (200 x 300: 1464 tokens vs 976). The rounding
  differs when the float product lands just under an integer (55 x 88 in a 24 x 24 canvas:
  14.999999999999998 rows is 15 for transformers, 14 for LLaVA).

The module goes in three steps. First the numbers (which canvas, how many tiles, the unpadded window,
the token count): pure functions of sizes, which the processor and the training data call to count an
image's tokens before encoding it. Then the pixels (tiles, crops), then the features (unpadding,
packing, the tower -> projector pass).

Every function here takes and returns sizes as (height, width), whatever the convention.

Shapes: R x C tiles (rows, columns), S tile side in pixels, g = S / patch tokens per tile side,
N = g*g tokens per crop, D feature width, H/W pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

from video.checks import positive_int
from video.frame_resize import resize_uint8
from vlm_vision.model.fusion_steps import project
from vlm_vision.model.transforms import CLIPImageTransform, ImageInput, as_frames

__all__ = [
    "BASE_RESOLUTION",
    "CONVENTIONS",
    "Convention",
    "DEFAULT_PINPOINTS",
    "anyres_batch",
    "anyres_grid_shape",
    "anyres_num_tokens",
    "anyres_pixel_values",
    "anyres_tiles",
    "check_pinpoints",
    "encode_anyres_images",
    "is_base_resolution",
    "pack_image_features",
    "resize_and_pad_size",
    "select_best_resolution",
    "size_pair",
    "unpad",
    "unpad_shape",
    "unpad_window",
]

Convention = Literal["transformers", "llava"]
CONVENTIONS: tuple[str, ...] = ("transformers", "llava")

# llava-v1.6-* and llava-hf/llava-v1.6-*: 1x2, 2x1, 2x2, 3x1 and 1x3 tiles of 336 (transformers reads
# each pair as [height, width]; LLaVA as [width, height]).
DEFAULT_PINPOINTS: tuple[tuple[int, int], ...] = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))

# ----- argument checks ----------------------------------------------------------------------------

def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")


BASE_RESOLUTION = (0, 0)
"""The image size that marks an image given as its one base crop, not tiled (a multi-image record's)."""


def is_base_resolution(size: object) -> bool:
    """True for `BASE_RESOLUTION` given as a pair, a tensor or a numpy row."""
    items = size.tolist() if isinstance(size, torch.Tensor) else size
    try:
        return [int(v) for v in items] == list(BASE_RESOLUTION)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return False


def size_pair(size: object, name: str) -> tuple[int, int]:
    """(height, width) from a pair of ints, a 2-element tensor, or a numpy row."""
    if isinstance(size, torch.Tensor):
        size = size.tolist()
    try:
        items = list(size)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"{name} must be a (height, width) pair, got {size!r}") from None
    if len(items) != 2:
        raise ValueError(f"{name} must be a (height, width) pair, got {size!r}")
    return positive_int(items[0], f"{name}[0] (height)"), positive_int(items[1], f"{name}[1] (width)")


def _canvases(pinpoints: Sequence[Sequence[int]], convention: str) -> list[tuple[int, int]]:
    """The pinpoint list as (height, width) canvases, in list order, under a convention."""
    if isinstance(pinpoints, (str, bytes)) or len(pinpoints) == 0:
        raise ValueError(f"grid_pinpoints must be a non-empty list of [a, b] pairs, got {pinpoints!r}")
    pairs = [size_pair(p, f"grid_pinpoints[{i}]") for i, p in enumerate(pinpoints)]
    return pairs if convention == "transformers" else [(b, a) for a, b in pairs]


def check_pinpoints(pinpoints: Sequence[Sequence[int]] | None, tile_size: int,
                     convention: str) -> tuple[tuple[int, int], ...] | None:
    """Anyres canvases as a tuple of pairs, each a whole number of tiles; None stays None."""
    if convention not in CONVENTIONS:
        raise ValueError(f"anyres_convention must be one of {CONVENTIONS}, got {convention!r}")
    if pinpoints is None:
        return None
    if isinstance(pinpoints, (str, bytes)) or len(pinpoints) == 0:
        raise ValueError(f"image_grid_pinpoints must be a non-empty list of [a, b] pairs, got {pinpoints!r}")
    pairs = tuple((int(a), int(b)) for a, b in pinpoints)
    bad = [p for p in pairs if min(p) <= 0 or p[0] % tile_size or p[1] % tile_size]
    if bad:
        raise ValueError(f"image_grid_pinpoints {bad} are not positive multiples of the tower's image size {tile_size}")
    return pairs


def _image_and_canvas(height: object, width: object, canvas_height: object,
                      canvas_width: object) -> tuple[int, int, int, int]:
    """An image size and a canvas size, each side checked to be a positive int."""
    return (positive_int(height, "height"), positive_int(width, "width"),
            positive_int(canvas_height, "canvas_height"), positive_int(canvas_width, "canvas_width"))


# ----- choosing the grid ----------------------------------------------------------------------------

def select_best_resolution(height: int, width: int, pinpoints: Sequence[Sequence[int]] = DEFAULT_PINPOINTS, *,
                           convention: Convention = "transformers") -> tuple[int, int]:
    """The canvas an image of this size is fitted into.

    Each canvas is scored by the pixels of the image it keeps after an aspect-preserving fit
    (`int(W * s) * int(H * s)` with `s = min(cw / W, ch / H)`, capped at the original area) and, among
    equal scores, by the canvas area it wastes. The first canvas listed wins a full tie.

    Args:
        height: image height in pixels.
        width: image width in pixels.
        pinpoints: candidate canvases, read as [height, width] ("transformers") or [width, height]
            ("llava").
        convention: "transformers" or "llava" (see the module docstring).

    Returns:
        (canvas_height, canvas_width).

    Raises:
        ValueError: for non-positive sizes, an empty pinpoint list or an unknown convention.

    Example:
        >>> select_best_resolution(480, 640)
        (672, 672)
        >>> select_best_resolution(336, 336), select_best_resolution(336, 336, convention="llava")
        ((336, 672), (672, 336))
    """
    height, width = positive_int(height, "height"), positive_int(width, "width")
    _check_convention(convention)
    best, best_kept, best_wasted = None, -1, math.inf
    for ch, cw in _canvases(pinpoints, convention):
        scale = min(cw / width, ch / height)
        kept = min(int(width * scale) * int(height * scale), width * height)
        wasted = ch * cw - kept
        if kept > best_kept or (kept == best_kept and wasted < best_wasted):
            best, best_kept, best_wasted = (ch, cw), kept, wasted
    assert best is not None
    return best


def anyres_grid_shape(height: int, width: int, *, grid_pinpoints: Sequence[Sequence[int]] = DEFAULT_PINPOINTS,
                      tile_size: int = 336, convention: Convention = "transformers") -> tuple[int, int]:
    """(rows, cols) of tiles for an image of this size.

    Raises:
        ValueError: if the chosen canvas is not a whole number of tiles (pinpoints must be multiples of
            `tile_size`), besides the errors of `select_best_resolution`.

    Example:
        >>> anyres_grid_shape(1080, 1920)
        (2, 2)
    """
    tile_size = positive_int(tile_size, "tile_size")
    ch, cw = select_best_resolution(height, width, grid_pinpoints, convention=convention)
    if ch % tile_size or cw % tile_size:
        raise ValueError(f"grid pinpoint {ch} x {cw} (height x width) is not a multiple of tile_size={tile_size}; "
                         f"every pinpoint must be a whole number of tiles")
    return ch // tile_size, cw // tile_size


def resize_and_pad_size(height: int, width: int, canvas_height: int, canvas_width: int) -> tuple[int, int]:
    """The (height, width) an image is resized to before it is padded onto the canvas.

    The tighter side fills the canvas exactly; the other is scaled by the same factor, rounded *up*,
    and clamped to the canvas. The image is then pasted at ((ch - h) // 2, (cw - w) // 2), so an odd
    leftover pixel of padding goes to the bottom / right.

    Example:
        >>> resize_and_pad_size(480, 640, 672, 672)
        (504, 672)
    """
    height, width, canvas_height, canvas_width = _image_and_canvas(height, width, canvas_height, canvas_width)
    scale_w, scale_h = canvas_width / width, canvas_height / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), canvas_height), canvas_width
    return canvas_height, min(math.ceil(width * scale_h), canvas_width)

# ----- unpadding --------------------------------------------------------------------------------------

def unpad_window(height: int, width: int, canvas_height: int, canvas_width: int,
                  convention: str) -> tuple[int, int, int, int]:
    """(top, rows, left, cols) of the feature canvas that holds image rather than padding.

    The padded axis is cut symmetrically by `(canvas - fitted) // 2` on both ends, so an odd
    difference keeps one row (column) more than the fitted size: 1080 x 1920 in a 48 x 48 canvas
    fits 27 rows and keeps 28.
    """
    _check_convention(convention)
    as_int = (lambda x: int(round(x, 7))) if convention == "transformers" else int
    if width / height > canvas_width / canvas_height:  # wider than the canvas: padding above and below
        fitted = as_int(height * (canvas_width / width))
        cut = (canvas_height - fitted) // 2
        return cut, canvas_height - 2 * cut, 0, canvas_width
    fitted = as_int(width * (canvas_height / height))
    cut = (canvas_width - fitted) // 2
    return 0, canvas_height, cut, canvas_width - 2 * cut


def unpad_shape(height: int, width: int, canvas_height: int, canvas_width: int, *,
                convention: Convention = "transformers") -> tuple[int, int]:
    """(rows, cols) of a feature canvas left after cutting off the rows/columns of padding.

    Args:
        height: original image height in pixels.
        width: original image width in pixels.
        canvas_height: feature rows of the stitched tile grid (R * g).
        canvas_width: feature columns of the stitched tile grid (C * g).
        convention: "transformers" (`int(round(x, 7))`) or "llava" (`int(x)`).

    Returns:
        (rows, cols); either may be 0 for extreme aspect ratios (a 10 x 3000 image keeps no grid row).

    Example:
        >>> unpad_shape(1080, 1920, 48, 48)
        (28, 48)
    """
    height, width, canvas_height, canvas_width = _image_and_canvas(height, width, canvas_height, canvas_width)
    _, rows, _, cols = unpad_window(height, width, canvas_height, canvas_width, convention)
    return rows, cols

def anyres_num_tokens(height: int, width: int, *, grid_pinpoints: Sequence[Sequence[int]] = DEFAULT_PINPOINTS,
                      tile_size: int = 336, patch_size: int = 14, convention: Convention = "transformers") -> int:
    """Visual tokens an image of this size becomes: g*g base tokens + rows * (cols + 1) grid tokens.

    Matches transformers' `LlavaNextProcessor` (with the CLS token dropped, strategy "default") and
    the length of `LlavaNextForConditionalGeneration`'s packed features.

    Args:
        height: image height in pixels.
        width: image width in pixels.
        grid_pinpoints: candidate canvases (multiples of `tile_size`).
        tile_size: the tower's input side S.
        patch_size: the tower's patch side; S must be a multiple of it.
        convention: "transformers" or "llava".

    Example:
        >>> anyres_num_tokens(336, 336), anyres_num_tokens(480, 640), anyres_num_tokens(1080, 1920)
        (1176, 2340, 1948)
    """
    tile_size, patch_size = positive_int(tile_size, "tile_size"), positive_int(patch_size, "patch_size")
    if tile_size % patch_size:
        raise ValueError(f"tile_size={tile_size} is not a multiple of patch_size={patch_size}")
    g = tile_size // patch_size
    rows, cols = anyres_grid_shape(height, width, grid_pinpoints=grid_pinpoints, tile_size=tile_size,
                                   convention=convention)
    kept_rows, kept_cols = unpad_shape(height, width, rows * g, cols * g, convention=convention)
    return g * g + kept_rows * (kept_cols + 1)


# ----- pixels ------------------------------------------------------------------------------------------

def anyres_tiles(image: torch.Tensor, *, grid_pinpoints: Sequence[Sequence[int]] = DEFAULT_PINPOINTS,
                 tile_size: int = 336, convention: Convention = "transformers") -> torch.Tensor:
    """uint8[3, H, W] -> uint8[1 + R*C, 3, S, S]: the squashed base image, then the tiles row-major.

    The image is resized (antialiased bicubic on uint8, PIL's arithmetic on the CPU) to
    `resize_and_pad_size`, pasted on a black canvas, and cut into S x S tiles, rows outer. The base
    image is the whole image resized to S x S without keeping its aspect ratio, as in both references.
    """
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be uint8[3, H, W], got {image.dtype}{list(image.shape)}")
    _, h, w = image.shape
    s = positive_int(tile_size, "tile_size")
    rows, cols = anyres_grid_shape(h, w, grid_pinpoints=grid_pinpoints, tile_size=s, convention=convention)
    ch, cw = rows * s, cols * s
    new_h, new_w = resize_and_pad_size(h, w, ch, cw)
    top, left = (ch - new_h) // 2, (cw - new_w) // 2
    frame = image[None]  # (1, 3, H, W)
    canvas = torch.zeros((1, 3, ch, cw), dtype=torch.uint8, device=image.device)  # (1, 3, R*S, C*S)
    canvas[:, :, top:top + new_h, left:left + new_w] = resize_uint8(frame, (new_h, new_w))
    tiles = canvas.view(3, rows, s, cols, s).permute(1, 3, 0, 2, 4).reshape(rows * cols, 3, s, s)  # (R*C, 3, S, S)
    base = resize_uint8(frame, (s, s))  # (1, 3, S, S)
    return torch.cat([base.contiguous(), tiles])  # (1 + R*C, 3, S, S)


def anyres_pixel_values(image: ImageInput, transform: CLIPImageTransform | None = None, *,
                        grid_pinpoints: Sequence[Sequence[int]] = DEFAULT_PINPOINTS, tile_size: int = 336,
                        convention: Convention = "transformers") -> tuple[torch.Tensor, tuple[int, int]]:
    """One image -> the normalised crops the tower encodes, and the image's (height, width).

    Args:
        image: one image: a PIL image, a path, or uint8 [H, W], [H, W, 3] or [1, 3, H, W] (any input
            `CLIPImageTransform` accepts, as long as it is a single image).
        transform: normalisation (its mean and std); its `image_size` must equal `tile_size`.
            Defaults to CLIP's at `tile_size`.
        grid_pinpoints: candidate canvases (multiples of `tile_size`).
        tile_size: the tower's input side S.
        convention: "transformers" or "llava".

    Returns:
        (float32[1 + R*C, 3, S, S], (H, W)); the size is what `pack_image_features` needs.

    Raises:
        ValueError: for more than one image, or a transform of another size.

    Example:
        >>> import numpy as np
        >>> pixels, size = anyres_pixel_values(np.zeros((480, 640, 3), np.uint8))
        >>> pixels.shape, size
        (torch.Size([5, 3, 336, 336]), (480, 640))
    """
    transform = CLIPImageTransform(tile_size) if transform is None else transform
    if transform.image_size != tile_size:
        raise ValueError(f"transform.image_size={transform.image_size} differs from tile_size={tile_size}")
    frames = as_frames(image)  # list of uint8[t, 3, H, W]
    if len(frames) != 1 or frames[0].shape[0] != 1:
        raise ValueError(f"anyres_pixel_values takes one image, got {sum(f.shape[0] for f in frames)}; "
                         f"call it once per image")
    frame = frames[0][0]  # (3, H, W)
    crops = anyres_tiles(frame, grid_pinpoints=grid_pinpoints, tile_size=tile_size, convention=convention)
    # channels last, so the transform cannot mistake a tiny S = 3 for the channel axis
    return transform(crops.permute(0, 2, 3, 1)), (frame.shape[1], frame.shape[2])  # (1 + R*C, 3, S, S)


# ----- features ----------------------------------------------------------------------------------------

def unpad(features: torch.Tensor, image_size: Sequence[int], *, convention: Convention = "transformers") -> torch.Tensor:
    """Cut the padding off a feature canvas float[D, h, w] -> float[D, rows, cols] (a view).

    Args:
        features: the stitched tile features, channels first.
        image_size: the original image's (height, width) in pixels.
        convention: "transformers" or "llava" rounding.
    """
    if features.ndim != 3 or features.shape[1] == 0 or features.shape[2] == 0:
        raise ValueError(f"features must be a non-empty (D, h, w) canvas, got shape {tuple(features.shape)}")
    height, width = size_pair(image_size, "image_size")
    top, rows, left, cols = unpad_window(height, width, features.shape[1], features.shape[2], convention)
    return features[:, top:top + rows, left:left + cols]  # (D, rows, cols)


def pack_image_features(features: torch.Tensor, image_size: Sequence[int], image_newline: torch.Tensor | None, *,
                        grid_pinpoints: Sequence[Sequence[int]] = DEFAULT_PINPOINTS, tile_size: int = 336,
                        convention: Convention = "transformers") -> torch.Tensor:
    """One image's crop features -> the token sequence the LLM sees: base, then the unpadded grid.

    The tile features are stitched into one (R*g, C*g) map, the padding rows/columns are cut off, the
    newline vector is appended to every remaining row, and the map is read row by row.

    Args:
        features: float[1 + R*C, N, D] projected patch features (no CLS token), base crop first.
        image_size: the original (height, width) in pixels.
        image_newline: float[D], or None to pack without row ends.
        grid_pinpoints: the candidate canvases the crops were cut with.
        tile_size: the tower's input side S.
        convention: "transformers" or "llava"; must match the one the crops were cut with.

    Returns:
        float[N + rows * (cols + 1), D] (rows * cols without a newline).

    Raises:
        ValueError: if N is not a square, the number of crops does not match the grid the image size
            implies, or the newline width differs from D.
    """
    if features.ndim != 3:
        raise ValueError(f"features must be float[1 + R*C, N, D], got shape {tuple(features.shape)}")
    crops, n, d = features.shape
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f"features have N={n} tokens per crop, not a square grid (was the CLS token kept?)")
    height, width = size_pair(image_size, "image_size")
    rows, cols = anyres_grid_shape(height, width, grid_pinpoints=grid_pinpoints, tile_size=tile_size,
                                   convention=convention)
    if crops != 1 + rows * cols:
        raise ValueError(f"an image of {height} x {width} (height x width) is cut into 1 + {rows} x {cols} = "
                         f"{1 + rows * cols} crops, but features have {crops}")
    if image_newline is not None and tuple(image_newline.shape) != (d,):
        raise ValueError(f"image_newline must be float[{d}], got shape {tuple(image_newline.shape)}")
    base = features[0]  # (N, D)
    grid = features[1:].view(rows, cols, g, g, d).permute(0, 2, 1, 3, 4).reshape(rows * g, cols * g, d)  # (R*g, C*g, D)
    top, kept_rows, left, kept_cols = unpad_window(height, width, rows * g, cols * g, convention)
    grid = grid[top:top + kept_rows, left:left + kept_cols]  # (rows, cols, D)
    if image_newline is not None:
        newline = image_newline.to(grid.dtype).to(grid.device).expand(kept_rows, 1, d)  # (rows, 1, D)
        grid = torch.cat([grid, newline], dim=1)  # (rows, cols + 1, D)
    return torch.cat([base, grid.reshape(-1, d)])  # (N + rows * (cols + 1), D)


# ----- batches and the model side ------------------------------------------------------------------

def anyres_batch(images: Sequence[ImageInput], transform: CLIPImageTransform | None = None, *,
                 grid_pinpoints: Sequence[Sequence[int]] = DEFAULT_PINPOINTS, tile_size: int = 336,
                 convention: Convention = "transformers") -> tuple[list[torch.Tensor], torch.Tensor]:
    """Several images -> their crops (one tensor per image, counts differ) and their sizes.

    Args:
        images: the images in prompt order (each anything `anyres_pixel_values` takes).
        transform, grid_pinpoints, tile_size, convention: as in `anyres_pixel_values`.

    Returns:
        (I x float[1 + R_i*C_i, 3, S, S], long[I, 2] of (height, width)).
    """
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence) or len(images) == 0:
        raise ValueError(f"images must be a non-empty list of images, got {type(images).__name__}")
    transform = CLIPImageTransform(tile_size) if transform is None else transform
    crops, sizes = [], []
    for image in images:
        pixels, size = anyres_pixel_values(image, transform, grid_pinpoints=grid_pinpoints, tile_size=tile_size,
                                           convention=convention)
        crops.append(pixels)
        sizes.append(size)
    return crops, torch.tensor(sizes, dtype=torch.long)  # I x (P_i, 3, S, S), (I, 2)


def _crop_list(pixel_values: torch.Tensor | Sequence[torch.Tensor], counts: list[int]) -> list[torch.Tensor]:
    """Each image's crops from a list, or from transformers' zero-padded float[I, P_max, 3, S, S]."""
    if isinstance(pixel_values, torch.Tensor):
        if pixel_values.ndim != 5 or pixel_values.shape[0] != len(counts):
            raise ValueError(f"pixel_values must be float[I, P, 3, S, S] with I = {len(counts)} images, "
                             f"got shape {list(pixel_values.shape)}")
        if pixel_values.shape[1] < max(counts):
            raise ValueError(f"pixel_values hold {pixel_values.shape[1]} crops per image, but the image sizes "
                             f"need up to {max(counts)} ({counts})")
        return [image[:count] for image, count in zip(pixel_values, counts)]  # I x (P_i, 3, S, S)
    crops = list(pixel_values)
    if len(crops) != len(counts):
        raise ValueError(f"got crops for {len(crops)} images but {len(counts)} image sizes")
    for i, (image, count) in enumerate(zip(crops, counts)):
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[0] != count:
            shape = list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"image {i} must have float[{count}, 3, S, S] crops for its size, got {shape}")
    return crops


def encode_anyres_images(tower: torch.nn.Module, projector: torch.nn.Module,
                         pixel_values: torch.Tensor | Sequence[torch.Tensor], image_sizes: torch.Tensor | Sequence,
                         image_newline: torch.Tensor | None, *,
                         grid_pinpoints: Sequence[Sequence[int]] = DEFAULT_PINPOINTS,
                         convention: Convention = "transformers") -> list[torch.Tensor]:
    """Tower -> projector -> packing for anyres images: one float[M_i, D] per image, in order.

    All crops of all images go through the tower as one batch.

    Args:
        tower: a `CLIPVisionTower` that drops the CLS token (`select_feature="patch"`); its
            `image_size` is the tile size.
        projector: tower width -> LLM width.
        pixel_values: I x float[1 + R_i*C_i, 3, S, S], or transformers' float[I, P_max, 3, S, S] whose
            trailing all-zero crops are ignored.
        image_sizes: long[I, 2] (or pairs) of original (height, width); `BASE_RESOLUTION` (0, 0) marks an
            image given as its one base crop (a multi-image record's, as LLaVA-OneVision reads them):
            its N tokens are kept as they are, no tiles, no newlines.
        image_newline: float[D], or None.
        grid_pinpoints, convention: as the crops were cut.

    Returns:
        I x float[N + rows_i * (cols_i + 1), D], N the tower's tokens per crop.
    """
    if getattr(tower, "select_feature", "patch") != "patch":
        raise ValueError(f"anyres packing needs patch tokens only (select_feature='patch'), "
                         f"got select_feature={tower.select_feature!r}")
    tile_size = tower.image_size
    sizes = [BASE_RESOLUTION if is_base_resolution(size) else size_pair(size, f"image_sizes[{i}]")
             for i, size in enumerate(image_sizes)]
    counts = [1 if (h, w) == BASE_RESOLUTION else
              1 + math.prod(anyres_grid_shape(h, w, grid_pinpoints=grid_pinpoints, tile_size=tile_size,
                                              convention=convention)) for h, w in sizes]
    crops = torch.cat(_crop_list(pixel_values, counts))  # (sum P, 3, S, S)
    projected = project(projector, tower(crops))  # (sum P, N, D)
    return [f[0] if size == BASE_RESOLUTION else  # (N, D): one crop at base resolution, not tiled
            pack_image_features(f, size, image_newline, grid_pinpoints=grid_pinpoints, tile_size=tile_size,
                                convention=convention)
            for f, size in zip(projected.split(counts), sizes)]  # I x (M_i, D)
