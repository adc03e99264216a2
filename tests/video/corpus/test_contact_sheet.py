"""Contact sheets: the sampled frames in one labelled image (`vlm-vision extract --preview`)."""

from __future__ import annotations

import torch

from video.corpus.contact_sheet import contact_sheet


def test_contact_sheet_size():
    frames = torch.zeros(10, 48, 64, 3, dtype=torch.uint8)
    sheet = contact_sheet(frames, [0.1 * i for i in range(10)], columns=4, thumb_width=32, pad=2)
    assert sheet.size == (4 * 32 + 5 * 2, 3 * 24 + 4 * 2)
