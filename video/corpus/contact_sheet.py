"""Contact sheets: the sampled frames of a video in one image, each labelled with its time (`--preview`)."""

from __future__ import annotations

import io
import math

import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = ["contact_sheet", "contact_sheet_png"]

SHEET_COLUMNS = 8
SHEET_THUMB_WIDTH = 192
SHEET_PAD = 4


def contact_sheet(frames: torch.Tensor, timestamps: list[float], *, columns: int = SHEET_COLUMNS,
                  thumb_width: int = SHEET_THUMB_WIDTH, pad: int = SHEET_PAD) -> Image.Image:
    """A grid of thumbnails of uint8[T, H, W, 3] frames, each labelled with its time in seconds.

    The sheet has min(T, columns) columns and ceil(T / columns) rows of `thumb_width` x
    round(thumb_width * H / W) thumbnails, `pad` pixels apart and from the border.

    Returns:
        A PIL RGB image.
    """
    t, h, w, _ = frames.shape
    thumb_h = max(1, round(thumb_width * h / w))
    cols = min(t, columns)
    rows = math.ceil(t / cols)
    sheet = Image.new("RGB", (cols * thumb_width + (cols + 1) * pad, rows * thumb_h + (rows + 1) * pad), (24, 24, 24))
    font = ImageFont.load_default()
    draw = ImageDraw.Draw(sheet)
    for k in range(t):
        r, c = divmod(k, cols)
        x, y = pad + c * (thumb_width + pad), pad + r * (thumb_h + pad)
        thumb = Image.fromarray(frames[k].numpy()).resize((thumb_width, thumb_h), Image.Resampling.BILINEAR)
        sheet.paste(thumb, (x, y))
        label = f"{timestamps[k]:.2f}s"
        box = draw.textbbox((x + 3, y + 2), label, font=font)
        draw.rectangle((box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1), fill=(0, 0, 0))
        draw.text((x + 3, y + 2), label, fill=(255, 255, 255), font=font)
    return sheet


def contact_sheet_png(frames: torch.Tensor, timestamps: list[float]) -> bytes:
    """`contact_sheet` encoded as PNG bytes."""
    buffer = io.BytesIO()
    contact_sheet(frames, timestamps).save(buffer, format="PNG")
    return buffer.getvalue()
