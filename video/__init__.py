"""Video: frame sampling (pure), decoding (decord), spatial pooling, per-frame token extraction."""

__all__: list[str] = []
