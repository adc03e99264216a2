"""Projectors from the vision width to the LLM width, and their checkpoint key maps."""

__all__: list[str] = []
