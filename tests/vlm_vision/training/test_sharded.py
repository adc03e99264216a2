"""Sharded training: FSDP2 in two real gloo processes (torchrun) against one process, its saved
weights, its export (`vlm-vision export`) and its exact resume; DeepSpeed ZeRO-3 in one CPU process
(the save path, the export); the shipped launch configs.

Every comparison uses LoRA dropout 0, so two processes draw no different dropout masks than one,
and samples whose answers have the same number of labelled tokens, so the mean over processes of
each process's mean loss is the mean over all tokens whichever way the loss is weighted.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.vlm_vision.train_fixtures import (
    COLOURS,
    QUESTION,
    write_colour_video,
    write_llm_folder,
    write_tower_folder,
)
from vlm_vision import TrainConfig, train
from vlm_vision.export.folder import ExportSettings, export_model
from vlm_vision.training.order import micro_batch_indices
from vlm_vision.training.runtime import check_processes
from vlm_vision.model.run_folder import load_trained

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples" / "accelerate"
FRAMES = 4
# Two processes vs one differ only in the order of float32 sums. Losses agree to 1e-5; AdamW divides
# each update by the root of its running squared gradient, so a weight moves by up to ~1e-5 more
# or less after 3 steps at lr 1e-2 (measured); 1e-4 is under a hundredth of the updates (checked).
LOSS_TOL = 1e-5
WEIGHT_TOL = 1e-4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Tiny LLM and tower; `data`: 8 one-colour videos; `mixed`: the same with text-only samples
    placed so that in the first step one process's whole micro-batch is text (the other's video)."""
    root = tmp_path_factory.mktemp("sharded")
    llm = write_llm_folder(root / "llm")
    tower = write_tower_folder(root / "tower")
    (root / "videos").mkdir()
    text = micro_batch_indices(0, num_samples=8, batch_size=2, num_processes=2, process_index=1, seed=0)
    videos, mixed = [], []
    for i in range(8):
        colour = list(COLOURS)[i % 4]
        answer = f"The video is mostly {colour}."
        write_colour_video(root / "videos" / f"{i}.mp4", COLOURS[colour], frames=FRAMES, seed=i)
        videos.append({"id": f"v{i}", "video": f"videos/{i}.mp4",
                       "conversations": [{"from": "human", "value": QUESTION}, {"from": "gpt", "value": answer}]})
        mixed.append({"id": f"t{i}", "conversations": [{"from": "human", "value": "Name a colour."},
                                                       {"from": "gpt", "value": answer}]} if i in text else videos[-1])
    for name, records in (("train.jsonl", videos), ("mixed.jsonl", mixed), ("eval.jsonl", videos[:5])):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    return {"llm": str(llm), "tower": str(tower), "data": str(root / "train.jsonl"), "mixed": str(root / "mixed.jsonl"),
            "eval": str(root / "eval.jsonl")}


def _args(parts, out: Path, **extra) -> list[str]:
    values = {"llm": parts["llm"], "tower": parts["tower"], "data": parts["data"], "output-dir": str(out),
              "stage": 2, "max-steps": 3, "batch-size": 2, "num-frames": FRAMES, "max-length": 128, "lora-r": 4,
              "lora-alpha": 8, "lora-dropout": 0.0, "lr": 1e-2, "projector-lr": 1e-2, "warmup-ratio": 0.0,
              "save-every": 2, **extra}
    flags = [a for k, v in values.items() for a in ((f"--{k}",) if v is True else (f"--{k}", str(v)))]
    return flags + ["--no-progress"]


def _single(parts, out: Path, batch_size: int, data: str | None = None, **extra) -> Path:
    values = dict(llm=parts["llm"], tower=parts["tower"], data=data or parts["data"], output_dir=str(out), stage=2,
                  max_steps=3, batch_size=batch_size, num_frames=FRAMES, max_length=128, lora_r=4, lora_alpha=8,
                  lora_dropout=0.0, lr=1e-2, projector_lr=1e-2, warmup_ratio=0.0, save_every=2, progress=False)
    return train(TrainConfig(**{**values, **extra}))


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), "-m", "vlm_vision.commands.main", "train", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _losses(out: Path) -> list[float]:
    return [e["loss"] for e in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in e]


def _eval_loss(out: Path) -> float:
    return [e["eval_loss"] for e in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "eval_loss" in e][-1]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return {**load_file(folder / "adapter_model.safetensors"), **load_file(folder / "projector.safetensors")}


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float) -> None:
    assert a.keys() == b.keys()
    worst = max((float((a[k] - b[k]).abs().max()), k) for k in a)
    assert worst[0] <= tol, worst


def _assert_exports_agree(sharded: Path, single: Path, out: Path) -> None:
    """`vlm-vision export` of a sharded run's final/ writes the same files, keys and (within the
    weight tolerance) tensors as the export of the same run in one process."""
    exported = [export_model(ExportSettings(run=str(run), out=str(out / name)))
                for run, name in ((sharded, "sharded"), (single, "single"))]
    files = [sorted(p.name for p in folder.iterdir()) for folder in exported]
    assert files[0] == files[1], files
    tensors = [{k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}
               for folder in exported]
    _assert_close(tensors[0], tensors[1], WEIGHT_TOL)
    for name in ("config.json", "processor_config.json", "chat_template.jinja", "tokenizer.json"):
        assert (exported[0] / name).read_text() == (exported[1] / name).read_text(), name


@pytest.mark.slow
def test_fsdp_two_processes_equal_one_and_resume_exactly(parts, tmp_path):
    """2 processes x batch 2 under FSDP = 1 process x batch 4: logged losses, final weights and the
    evaluation loss (5 samples: one process runs an uncounted stand-in batch so both run the
    sharded model equally often); `final/` reloads whole; a run resumed from checkpoint-2 ends
    bit-identical to the uninterrupted one."""
    one = _single(parts, tmp_path / "one", batch_size=4, eval_data=parts["eval"])
    _torchrun(_args(parts, tmp_path / "fsdp", fsdp=True, **{"eval-data": parts["eval"]}), tmp_path)
    fsdp = tmp_path / "fsdp"

    assert _losses(fsdp) == pytest.approx(_losses(tmp_path / "one"), abs=LOSS_TOL)
    assert _eval_loss(fsdp) == pytest.approx(_eval_loss(tmp_path / "one"), abs=LOSS_TOL)
    trained = _weights(fsdp / "final")
    _assert_close(trained, _weights(one), WEIGHT_TOL)
    # LoRA's B starts at zero, so its values are the updates: whole tensors, well above the tolerance.
    assert min(float(v.abs().max()) for k, v in trained.items() if "lora_B" in k) > 100 * WEIGHT_TOL

    _assert_exports_agree(fsdp / "final", one, tmp_path / "exports")

    # final/ rebuilds with load_trained (peft reads the adapter) and answers as the 1-process model does.
    model, processor = load_trained(fsdp / "final")
    reference, _ = load_trained(one)
    inputs = processor([{"role": "user", "content": "Name a colour."}])
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, reference(**inputs).logits, atol=1e-4)

    # The checkpoint holds the whole optimizer state, gathered. Cut the run back to checkpoint-2 (as if
    # it had been killed there) and resume it: it ends bit-identical to the uninterrupted run.
    assert (fsdp / "checkpoint-2" / "optimizer_full.pt").is_file()
    straight = _losses(fsdp)
    shutil.rmtree(fsdp / "final")
    lines = (fsdp / "log.jsonl").read_text().splitlines()
    (fsdp / "log.jsonl").write_text("".join(line + "\n" for line in lines[:2]))
    _torchrun(_args(parts, fsdp, fsdp=True, resume=True, **{"eval-data": parts["eval"]}), tmp_path)
    assert _losses(fsdp) == straight
    again = _weights(fsdp / "final")
    assert all(torch.equal(again[k], trained[k]) for k in trained)


@pytest.mark.slow
def test_fsdp_process_with_text_only_batch_matches_one_process(parts, tmp_path):
    """In the first step process 1's micro-batch is text only while process 0's holds videos: both
    still run the same sharded modules (no collective is skipped or mismatched), and the run
    matches one process that holds both micro-batches."""
    one = _single(parts, tmp_path / "one", batch_size=4, data=parts["mixed"])
    _torchrun(_args(parts, tmp_path / "fsdp", fsdp=True, data=parts["mixed"]), tmp_path)
    # Here the two runs sum different micro-batch splits (one process's share has no media), so the
    # float32 rounding differs more than above and AdamW magnifies it on weights whose gradients are
    # tiny: measured 2.4e-5 on losses near 6.8 and 1.2e-4 on the projector's weights. A wrongly
    # weighted or dropped micro-batch moves both far more.
    assert _losses(tmp_path / "fsdp") == pytest.approx(_losses(tmp_path / "one"), abs=10 * LOSS_TOL)
    _assert_close(_weights(tmp_path / "fsdp" / "final"), _weights(one), 5 * WEIGHT_TOL)


@pytest.mark.slow
def test_fsdp_runs_under_bf16_autocast(parts, tmp_path):
    """--mixed-precision bf16 reaches the FSDP model (accelerate does not wrap it): the losses are
    bf16's, not float32's, and match one bf16 process to bf16's rounding."""
    _single(parts, tmp_path / "fp32", batch_size=4, max_steps=2)
    _single(parts, tmp_path / "one", batch_size=4, max_steps=2, mixed_precision="bf16")
    _torchrun(_args(parts, tmp_path / "fsdp", fsdp=True, **{"max-steps": 2, "mixed-precision": "bf16"}), tmp_path)
    bf16, fp32 = _losses(tmp_path / "fsdp"), _losses(tmp_path / "fp32")
    assert bf16 == pytest.approx(_losses(tmp_path / "one"), abs=2e-2)
    assert abs(bf16[0] - fp32[0]) > 1e-4, (bf16, fp32)  # autocast was on


def _zero3_config(tmp_path: Path) -> Path:
    """The shipped ZeRO-3 config for one process, every parameter partitioned (none kept whole for
    being small, as tiny models' all would be), so saving must gather."""
    ds = json.loads((EXAMPLES / "ds_zero3.json").read_text())
    ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    (tmp_path / "ds.json").write_text(json.dumps(ds))
    launch = yaml.safe_load((EXAMPLES / "zero3.yaml").read_text())
    launch.update(num_processes=1, main_process_port=_free_port())
    launch["deepspeed_config"]["deepspeed_config_file"] = str(tmp_path / "ds.json")
    (tmp_path / "zero3.yaml").write_text(yaml.safe_dump(launch))
    return tmp_path / "zero3.yaml"


@pytest.mark.slow
def test_deepspeed_zero3_one_process_saves_whole_adapter_and_resumes(parts, tmp_path):
    """ZeRO-3 in one CPU process through `accelerate launch`: the prepared loader fills the "auto"
    micro-batch size; `final/` holds the whole adapter and projector (gathered), equal to a plain
    run's; the engine's checkpoint holds the trainable weights only; resuming from it is exact."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(_zero3_config(tmp_path)),
              "-m", "vlm_vision.commands.main", "train"]

    def run(*extra: str) -> None:
        args = _args(parts, tmp_path / "ds", **{"batch-size": 4}) + list(extra)
        proc = subprocess.run(launch + args, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    run()
    one = _single(parts, tmp_path / "one", batch_size=4)
    ds = tmp_path / "ds"
    trained = _weights(ds / "final")
    _assert_close(trained, _weights(one), WEIGHT_TOL)
    assert _losses(ds) == pytest.approx(_losses(tmp_path / "one"), abs=LOSS_TOL)
    model, _ = load_trained(ds / "final")  # peft and the projector read the gathered files
    assert model.llm.peft_config["default"].r == 4
    _assert_exports_agree(ds / "final", one, tmp_path / "exports")

    states = torch.load(next((ds / "checkpoint-2").rglob("*model_states.pt")), weights_only=False)
    assert set(states["module"]) == {"llm." + k.replace(".weight", ".default.weight") for k in trained
                                     if "lora_" in k} | {"projector." + k.split("mm_projector.")[1] for k in trained
                                                         if "mm_projector." in k}

    straight = _losses(ds)
    shutil.rmtree(ds / "final")
    lines = (ds / "log.jsonl").read_text().splitlines()
    (ds / "log.jsonl").write_text("".join(line + "\n" for line in lines[:2]))
    run("--resume")
    assert _losses(ds) == straight
    again = _weights(ds / "final")
    assert all(torch.equal(again[k], trained[k]) for k in trained)


def test_processes_must_agree(monkeypatch):
    """A launcher that starts 2 processes which accelerate sees as 1 each (DeepSpeed on CPUs, or
    torchrun without a process group) is refused before any work."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="2 processes but accelerate sees 1"):
        check_processes(SimpleNamespace(num_processes=1, distributed_type="DEEPSPEED"))
    monkeypatch.setenv("WORLD_SIZE", "1")
    check_processes(SimpleNamespace(num_processes=1, distributed_type="NO"))


def test_fsdp_refuses_what_it_cannot_train(parts, tmp_path):
    common = dict(llm=parts["llm"], tower=parts["tower"], data=parts["data"], output_dir=str(tmp_path), fsdp=True)
    with pytest.raises(ValueError, match="fp16"):
        TrainConfig(mixed_precision="fp16", **common)
    with pytest.raises(ValueError, match="new tokens' rows"):
        TrainConfig(train_new_token_embeddings=True, **common)
    with pytest.raises(ValueError, match="eval questions"):
        TrainConfig(eval_data=parts["eval"], eval_accuracy=True, **common)


def test_shipped_launch_configs_parse():
    """Every config in examples/accelerate is read by accelerate itself, with the right kind; the
    DeepSpeed ones point at their JSON, whose batch settings are left to the run ("auto")."""
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {"one_gpu": "NO", "ddp": "MULTI_GPU", "fsdp": "MULTI_GPU", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED"}
    for name, kind in kinds.items():
        config = load_config_from_file(str(EXAMPLES / f"{name}.yaml"))
        assert str(config.distributed_type).endswith(kind), (name, config.distributed_type)
        if kind == "DEEPSPEED":
            ds = json.loads((REPO / config.deepspeed_config["deepspeed_config_file"]).read_text())
            assert ds["zero_optimization"]["stage"] == int(name[-1])
            assert ds["train_micro_batch_size_per_gpu"] == "auto" and ds["gradient_clipping"] == "auto"
