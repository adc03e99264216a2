"""The anyres grid in numbers: which canvas an image gets, its tiles, the unpadded window, its token count.

Pure functions of sizes (no pixels, no features), shared by the pixel side (`vlm_vision.model.anyres`), the
processor and the training data, which count an image's tokens before encoding it. See
`vlm_vision.model.anyres` for the scheme and the two conventions ("transformers", "llava").

Every function here takes and returns sizes as (height, width), whatever the convention.

Shapes: R x C tiles (rows, columns), S tile side in pixels, g = S / patch tokens per tile side,
H/W pixels.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Literal

import torch

__all__ = [
    "BASE_RESOLUTION",
    "CONVENTIONS",
    "DEFAULT_PINPOINTS",
    "Convention",
    "anyres_grid_shape",
    "anyres_num_tokens",
    "check_pinpoints",
    "is_base_resolution",
    "positive_int",
    "resize_and_pad_size",
    "select_best_resolution",
    "size_pair",
    "unpad_shape",
    "unpad_window",
]

Convention = Literal["transformers", "llava"]
CONVENTIONS: tuple[str, ...] = ("transformers", "llava")

# llava-v1.6-* and llava-hf/llava-v1.6-*: 1x2, 2x1, 2x2, 3x1 and 1x3 tiles of 336 (transformers reads
# each pair as [height, width]; LLaVA as [width, height]).
DEFAULT_PINPOINTS: tuple[tuple[int, int], ...] = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))

# ----- argument checks ----------------------------------------------------------------------------

def positive_int(value: object, name: str) -> int:
    """`value` as an int when it is a positive integer (not a bool); TypeError or ValueError naming `name`."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be a positive int, got {value!r} ({type(value).__name__})") from None
    if number <= 0:
        raise ValueError(f"{name} must be a positive int, got {number}")
    return number


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
