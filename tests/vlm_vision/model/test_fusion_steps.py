"""The fusion steps on hand-made tensors: splice order, label masking, position ids."""

import torch

from tests.vlm_vision.fusion_fixtures import IMAGE_ID, VIDEO_ID
from vlm_vision.model.placeholders import IGNORE_INDEX
from vlm_vision.model.fusion_steps import mask_labels, position_ids_from_mask, splice


def test_splice_writes_rows_in_prompt_order():
    ids = torch.tensor([[5, 9, 9, 6], [9, 7, 8, 9]])
    embeds = torch.zeros(2, 4, 1)
    out = splice(embeds, ids, 9, torch.tensor([[1.0], [2.0], [3.0], [4.0]]), what="test")
    assert out.squeeze(-1).tolist() == [[0, 1, 2, 0], [3, 0, 0, 4]]
    assert embeds.abs().sum() == 0  # not in place


def test_mask_labels():
    ids = torch.tensor([[1, IMAGE_ID, 5, VIDEO_ID, 6]])
    assert mask_labels(ids, ids, [IMAGE_ID, VIDEO_ID]).tolist() == [[1, IGNORE_INDEX, 5, IGNORE_INDEX, 6]]


def test_position_ids_from_mask():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert position_ids_from_mask(mask, 5).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2]]
    assert position_ids_from_mask(mask, 2).tolist() == [[1, 2], [2, 2]]
