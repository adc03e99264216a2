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

The numbers (which canvas, how many tiles and tokens) are pure functions of sizes and live in
`vlm_vision.model.anyres_grid`, whose public names this module also offers; here are the pixels (tiles,
crops) and the features (unpadding, packing, the tower -> projector pass).

Every function here takes and returns sizes as (height, width), whatever the convention.

Shapes: R x C tiles (rows, columns), S tile side in pixels, g = S / patch tokens per tile side,
N = g*g tokens per crop, D feature width, H/W pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from vlm_vision.model.anyres_grid import (
    BASE_RESOLUTION,
    DEFAULT_PINPOINTS,
    Convention,
    anyres_grid_shape,
    is_base_resolution,
    positive_int,
    resize_and_pad_size,
    size_pair,
    unpad_window,
)
from vlm_vision.model.fusion_steps import project
from vlm_vision.model.transforms import CLIPImageTransform, ImageInput, as_frames
from video.frame_resize import resize_uint8

__all__ = [
    "anyres_batch",
    "anyres_pixel_values",
    "anyres_tiles",
    "encode_anyres_images",
    "pack_image_features",
    "unpad",
]


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
