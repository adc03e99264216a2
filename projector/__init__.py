"""Projectors from the vision width to the LLM width, and their checkpoint key maps."""

from projector.builders import build_projector
from projector.checkpoints import load_projector, save_projector

__all__: list[str] = ["build_projector", "load_projector", "save_projector"]
