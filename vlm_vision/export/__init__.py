"""Export: a trained run as a transformers folder (or LLaVA's projector file), with its processor files and model card."""
