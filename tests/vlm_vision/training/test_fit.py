"""The one training loop (`fit`): both jobs (`train`, `clip-train`) resume exactly; accumulation, empty
micro-batches and used folders, on a toy job.

Real accelerate and real torch throughout: the tiny Llama and CLIP tower of `train_fixtures`, the tiny
CLIP of `tiny_clip`, and for the toy job a linear model on a few points. A run is "killed" by an
exception raised right after its checkpoint is written, then resumed in a new call.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.vlm_vision.tiny_clip import save_tiny_clip, write_colour_squares
from tests.vlm_vision.train_fixtures import write_colour_dataset, write_llm_folder, write_tower_folder
from vlm_vision.errors import InputError
from vlm_vision.data.files import Skipped
from vlm_vision.training.checkpoint import load_trainable, save_trainable
from vlm_vision.training.clip import ClipTrainConfig
from vlm_vision.training.clip import train as clip_train
from vlm_vision.training.config import TrainConfig
from vlm_vision.training.fit import FitSettings, Job, MicroBatch, fit, shuffled_batches
from vlm_vision.training.loop import train
from vlm_vision.training.skips import SkipCeiling

fit_module = importlib.import_module("vlm_vision.training.fit")


class _Killed(Exception):
    """Stands for the process dying right after a checkpoint was written."""


def _kill_after_checkpoint(monkeypatch, at_step: int) -> None:
    original = fit_module.save_checkpoint

    def save_then_die(accelerator, out, step, *args, **kwargs):
        original(accelerator, out, step, *args, **kwargs)
        if step == at_step:
            raise _Killed

    monkeypatch.setattr(fit_module, "save_checkpoint", save_then_die)


def _log(out: Path, drop: tuple[str, ...] = ()) -> list[dict]:
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in drop} for row in rows]


# ----- vlm-vision train ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llava(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("llava")
    return {"llm": str(write_llm_folder(root / "llm")), "tower": str(write_tower_folder(root / "tower")),
            "data": str(write_colour_dataset(root / "media", n=8, frames=4)), "media_root": str(root / "media")}


def test_train_resumed_after_a_checkpoint_ends_with_the_uninterrupted_weights(llava, tmp_path, monkeypatch):
    """Stage 2 (LoRA dropout on: the RNG state must come back too), two micro-batches per step."""
    def config(out: Path, **extra) -> TrainConfig:
        return TrainConfig(**llava, output_dir=str(out), stage=2, max_steps=4, batch_size=2, grad_accum=2,
                           num_frames=4, max_length=128, lora_r=4, lora_alpha=8, lora_dropout=0.1, lr=1e-2,
                           warmup_ratio=0.0, save_every=2, progress=False, **extra)

    straight = train(config(tmp_path / "straight")).parent
    _kill_after_checkpoint(monkeypatch, at_step=2)
    with pytest.raises(_Killed):
        train(config(tmp_path / "resumed"))
    monkeypatch.undo()
    assert [e["step"] for e in _log(tmp_path / "resumed")] == [1, 2]
    resumed = train(config(tmp_path / "resumed", resume=True)).parent

    assert _log(resumed, drop=("tokens_per_s",)) == _log(straight, drop=("tokens_per_s",))
    assert len(_log(straight)) == 4
    for name in ("adapter_model.safetensors", "projector.safetensors"):
        a, b = load_file(straight / "final" / name), load_file(resumed / "final" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    start = load_file(resumed / "checkpoint-2" / "projector.safetensors")
    assert not all(torch.equal(start[k], b[k]) for k in start)  # it trained after the resume


# ----- vlm-vision clip-train -------------------------------------------------------------------------

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> dict[str, Path]:
    """12 noisy colour squares captioned by colour, 2 files that do not decode, and a tiny CLIP."""
    root = tmp_path_factory.mktemp("pairs")
    media = root / "media"
    records = write_colour_squares(media, COLOURS, per_colour=3)
    for k in range(2):
        (media / f"broken{k}.png").write_bytes(b"\x89PNG but not really")
        records.insert(4 * k + 2, {"image": f"broken{k}.png", "caption": "a broken square"})
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return {"data": root / "pairs.jsonl", "media": media, "model": save_tiny_clip(root / "clip")}


@pytest.mark.parametrize("killed_at", [3, 4], ids=["at-an-epoch-end", "inside-an-epoch"])
def test_clip_train_resumed_after_a_checkpoint_ends_with_the_uninterrupted_weights(pairs, tmp_path, monkeypatch,
                                                                                 killed_at):
    """11 training pairs in batches of 4 are 3 batches an epoch: checkpoint-3 ends epoch 1, checkpoint-4
    is one batch into epoch 2. Either way the resumed run sees the uninterrupted run's batches."""
    def config(out: Path, **extra) -> ClipTrainConfig:
        return ClipTrainConfig(model=str(pairs["model"]), data=pairs["data"], media_root=pairs["media"],
                               output_dir=out, max_steps=8, batch_size=4, lr=1e-3, eval_fraction=0.2,
                               max_skip_fraction=0.5, save_every=killed_at, **extra)

    straight = tmp_path / "straight"
    expected = clip_train(config(straight))
    assert (straight / "skipped.jsonl").is_file()  # a broken file was met in training (and counted)
    _kill_after_checkpoint(monkeypatch, at_step=killed_at)
    with pytest.raises(_Killed):
        clip_train(config(tmp_path / "resumed"))
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "resumed").glob("checkpoint-*")) == [f"checkpoint-{killed_at}"]
    got = clip_train(config(tmp_path / "resumed", resume=True))

    assert _log(tmp_path / "resumed") == _log(straight) and len(_log(straight)) == 8
    assert {k: v for k, v in got.items() if k != "config"} == {k: v for k, v in expected.items() if k != "config"}
    assert expected["skipped"] == 2 and expected["num_train"] == 11
    a, b = load_file(straight / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_clip_train_refuses_a_changed_resume_and_a_folder_holding_checkpoints(pairs, tmp_path):
    def config(**extra) -> ClipTrainConfig:
        values = dict(model=str(pairs["model"]), data=pairs["data"], media_root=pairs["media"], output_dir=tmp_path,
                      max_steps=2, batch_size=4, eval_fraction=0.0, max_skip_fraction=0.5)
        return ClipTrainConfig(**{**values, **extra})

    clip_train(config())
    clip_train(config(max_steps=1))  # no checkpoint: a new run replaces the log, as clip-train always did
    assert [e["step"] for e in _log(tmp_path)] == [1]
    clip_train(config(save_every=1))
    with pytest.raises(InputError, match="already holds a run"):
        clip_train(config())
    with pytest.raises(InputError, match=r"cannot resume.*'lr': \(1e-05, 0.001\)"):
        clip_train(config(resume=True, max_steps=3, lr=1e-3))
    got = clip_train(config(resume=True, max_steps=3, save_every=0))  # max_steps and save_every may change
    assert got["steps"] == 3 and [e["step"] for e in _log(tmp_path)] == [1, 2, 3]


# ----- the loop itself, on a toy job -----------------------------------------------------------------

X = torch.linspace(-1, 1, 8)[:, None] * torch.tensor([[1.0, -2.0, 0.5]])  # (8, 3)
Y = X @ torch.tensor([[0.3], [0.1], [-0.7]]) + 0.2  # (8, 1)


def _toy(batch_size: int, bad: set[int] = frozenset()):
    """A `build` for `fit`: a linear fit by SGD on the 8 points, summed squared error (each point weighs 1);
    the points in `bad` "fail to load" and are skipped."""
    def build(accelerator, log) -> Job:
        model = torch.nn.Linear(3, 1)
        ceiling = SkipCeiling(len(X), 1.0, "toy points", listed_in=None)

        def optimizer():
            sgd = torch.optim.SGD(model.parameters(), lr=0.1)
            return sgd, torch.optim.lr_scheduler.LambdaLR(sgd, lambda _: 1.0)

        def micro_batches(loader, position):
            for (index, x, y), epoch_end in shuffled_batches(loader, position):
                keep = torch.tensor([int(i) not in bad for i in index], dtype=torch.bool)
                skipped = [Skipped(str(int(i)), "bad point", "toy") for i in index[~keep]]
                yield MicroBatch((x[keep], y[keep]), skipped, int(keep.sum()), float(keep.sum()), epoch_end)

        def loss(model, data, autocast):
            x, y = data
            return ((model(x) - y) ** 2).sum(), {}

        dataset = torch.utils.data.TensorDataset(torch.arange(len(X)), X, Y)
        return Job(model=model, settings={"batch_size": batch_size}, skip_ceiling=ceiling,
                   load_weights=lambda folder: load_trainable(model, folder),
                   save_weights=lambda folder: save_trainable(model, folder, accelerator.is_main_process),
                   optimizer=optimizer,
                   loader=lambda position: torch.utils.data.DataLoader(
                       dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)),
                   micro_batches=micro_batches, loss=loss, entry=lambda values, lrs, seconds: {"lr": lrs["0"]},
                   finish=lambda fitted: (fitted, {n: p.detach().clone() for n, p in fitted.model.named_parameters()}))
    return build


def test_accumulated_micro_batches_step_like_one_batch(tmp_path):
    """Batch 4 = two micro-batches of 2: the same samples per step (one shuffle), the same loss and weights."""
    one, w1 = fit(FitSettings(tmp_path / "one", max_steps=4, seed=0, progress=False), _toy(4))
    two, w2 = fit(FitSettings(tmp_path / "two", max_steps=4, seed=0, grad_accum=2, progress=False), _toy(2))
    torch.testing.assert_close(torch.tensor(two.losses), torch.tensor(one.losses), rtol=1e-6, atol=1e-7)
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-6, atol=1e-7)
    assert one.losses[-1] < one.losses[0] and [e["lr"] for e in _log(tmp_path / "one")] == [0.1] * 4


def test_empty_micro_batches_are_skipped_and_a_wholly_bad_epoch_stops(tmp_path):
    bad = {0, 1, 2, 3, 4, 5}  # in batches of 1: six of each epoch's eight are empty
    fitted, _ = fit(FitSettings(tmp_path / "some", max_steps=4, seed=0, progress=False), _toy(1, bad))
    assert fitted.step == 4 and len(fitted.losses) == 4
    skipped = [json.loads(line) for line in (tmp_path / "some" / "skipped.jsonl").read_text().splitlines()]
    assert {s["id"] for s in skipped} <= {str(i) for i in bad} and skipped[0]["where"].startswith("step ")
    with pytest.raises(ValueError, match="no training batch could be loaded in a whole epoch: 8 of 8"):
        fit(FitSettings(tmp_path / "none", max_steps=2, seed=0, progress=False), _toy(2, set(range(8))))


def test_a_used_folder_is_refused_unless_the_job_replaces_its_log(tmp_path):
    fit(FitSettings(tmp_path, max_steps=1, seed=0, progress=False), _toy(4))
    with pytest.raises(InputError, match="already holds a run"):
        fit(FitSettings(tmp_path, max_steps=1, seed=0, progress=False), _toy(4))
    fitted, _ = fit(FitSettings(tmp_path, max_steps=2, seed=0, replace_log=True, progress=False), _toy(4))
    assert [e["step"] for e in _log(tmp_path)] == [1, 2] and fitted.step == 2
