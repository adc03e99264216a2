"""The tower `vlm-vision extract` encodes with: pretrained, or random through a named architecture."""

from __future__ import annotations

from pathlib import Path

from typing import TYPE_CHECKING

import torch

from vlm_vision.errors import InputError
from vlm_vision.commands.input_checks import weights_unavailable

if TYPE_CHECKING:
    from transformers import CLIPVisionConfig

    from vlm_vision.model.tower import CLIPVisionTower

__all__ = ["RANDOM_SEED", "RANDOM_WEIGHTS_HINT", "load_tower"]

RANDOM_SEED = 0  # random weights are drawn from this seed, so that reruns give the same tokens
RANDOM_WEIGHTS_HINT = ("To run offline anyway: add --random-weights, which runs the same architecture with random "
                       "weights; the tokens then have the right shapes but no meaning, and are labelled as random in "
                       "the output files, the manifest and the summary.")


def load_tower(model: str, *, random_weights: bool, device: torch.device,
               dtype: torch.dtype) -> tuple["CLIPVisionTower", str]:
    """The tower to extract with, and the label stored with its tokens.

    Random weights are drawn from `RANDOM_SEED`: the same architecture gives the same weights
    (and the same `weights_fingerprint`) in every run.

    Raises:
        WeightsUnavailable: when pretrained weights are asked for and are not on this machine.
        InputError: with `random_weights`, when `model` does not name an architecture.
    """
    from vlm_vision.model.tower import CLIPVisionTower  # lazy: transformers loads after the folder lock (busy: stop at once)

    if random_weights:
        variant, config = _architecture(model)
        with torch.random.fork_rng(devices=[]):  # the same random tower every run, the caller's RNG untouched
            torch.manual_seed(RANDOM_SEED)
            tower = CLIPVisionTower.from_config(config)
        return tower.to(device=device, dtype=dtype), f"random:{variant}"
    try:
        tower = CLIPVisionTower.from_pretrained(model, dtype=dtype, device=device)
    except OSError as e:  # not found locally or in the HF cache (FileNotFoundError), or no network
        raise weights_unavailable(model, "--model", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                                  extra_hint=RANDOM_WEIGHTS_HINT) from e
    return tower, model


def _architecture(model: str) -> tuple[str, "CLIPVisionConfig"]:
    """(variant label, CLIPVisionConfig) for --random-weights."""
    from transformers import CLIPVisionConfig  # lazy: as `load_tower`, transformers loads after the folder lock

    from vlm_vision.model.configs import HUB_IDS, VARIANTS, vision_config  # lazy: imports transformers, as above
    if model in VARIANTS:
        return model, vision_config(model)
    by_hub_id = {hub_id: name for name, hub_id in HUB_IDS.items()}
    if model in by_hub_id:
        return by_hub_id[model], vision_config(by_hub_id[model])
    if (Path(model) / "config.json").is_file():
        return str(model), CLIPVisionConfig.from_pretrained(model)
    raise InputError("--random-weights needs an architecture", f"--model {model}", f"a variant name "
                     f"{sorted(VARIANTS)}, one of the Hub ids {sorted(by_hub_id)}, or a folder with config.json")

