"""Train the two LLaVA stages on a small dataset this script builds itself, offline, in seconds.

The task: "What colour is this video?" over short one-colour videos (written with PyAV). Stage 1
fits the projector to a frozen LLM; stage 2 starts from stage 1's projector and adds LoRA on the
LLM. Then the trained folder is reloaded in one call, asked about videos it never saw, and merged
into a standalone model. With the default tiny random models the whole script runs in well under
a minute on two CPU cores:

    python examples/train_stage1_stage2.py --workdir /tmp/colours

With real models (any Hugging Face causal LM with a chat template, any CLIP tower), e.g.:

    python examples/train_stage1_stage2.py --llm HuggingFaceTB/SmolLM2-135M-Instruct \\
        --tower openai/clip-vit-large-patch14-336

The same two runs from the command line (what this script calls):

    vlm-vision train --llm LLM --tower TOWER --data colours/train.jsonl --output-dir runs/stage1 --stage 1
    vlm-vision train --llm LLM --tower TOWER --data colours/train.jsonl --output-dir runs/stage2 --stage 2 \\
        --init-from runs/stage1/final
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import av
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from vlm_vision import TrainConfig, train  # noqa: E402
from vlm_vision.model.run_folder import load_trained, merge_trained  # noqa: E402

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
QUESTION = "<video>\nWhat colour is this video?"
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def write_video(path: Path, rgb: tuple[int, int, int], frames: int, seed: int) -> Path:
    """A 64x64 H.264 clip of `frames` frames of one colour, with a little noise."""
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            image = np.clip(np.array(rgb) + rng.integers(-25, 25, (64, 64, 3)), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_dataset(root: Path, n: int, frames: int, seed: int = 0) -> Path:
    """`n` videos under root/videos and root/train.jsonl in LLaVA's conversation format."""
    (root / "videos").mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    with (root / "train.jsonl").open("w") as f:
        for i in range(n):
            colour = names[i % len(names)]
            rel = f"videos/{colour}_{i}.mp4"
            write_video(root / rel, COLOURS[colour], frames, seed=seed + i)
            f.write(json.dumps({"id": f"{colour}_{i}", "video": rel, "conversations": [
                {"from": "human", "value": QUESTION},
                {"from": "gpt", "value": f"The video is mostly {colour}."}]}) + "\n")
    return root / "train.jsonl"


def write_tiny_models(root: Path) -> tuple[str, str]:
    """A 2-layer Llama with a byte-level BPE tokenizer (ChatML template) and a 2-layer CLIP tower,
    random weights, saved as the folders `--llm` and `--tower` take."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = ["user assistant system", QUESTION] + [f"The video is mostly {c}." for c in COLOURS]
    tk.train_from_iterator(corpus * 5, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHATML
    llm = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tokenizer),
                                       initializer_range=0.2, tie_word_embeddings=False,
                                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    llm.save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    tower = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, image_size=28, patch_size=7))
    tower.save_pretrained(root / "tower")
    return str(root / "llm"), str(root / "tower")


def losses(run_dir: Path) -> list[float]:
    return [e["loss"] for e in map(json.loads, (run_dir / "log.jsonl").read_text().splitlines()) if "loss" in e]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="train_example", help="dataset, models and runs go here")
    parser.add_argument("--llm", help="a causal LM with a chat template (default: tiny random Llama)")
    parser.add_argument("--tower", help="a CLIP tower (default: tiny random CLIP)")
    parser.add_argument("--num-frames", type=int, default=TrainConfig.num_frames,
                        help="frames per video, written and sampled (default: TrainConfig's, %(default)s)")
    parser.add_argument("--samples", type=int, default=16)
    args = parser.parse_args()

    work = Path(args.workdir)
    for old in ("stage1", "stage2", "merged"):  # a rerun starts afresh
        if (work / old).exists():
            import shutil

            shutil.rmtree(work / old)
    data = write_dataset(work / "colours", args.samples, frames=args.num_frames)
    tiny_llm, tiny_tower = write_tiny_models(work / "models") if not (args.llm and args.tower) else (None, None)
    common = dict(llm=args.llm or tiny_llm, tower=args.tower or tiny_tower, data=str(data), batch_size=4,
                  num_frames=args.num_frames, lora_r=8, lora_alpha=16, warmup_ratio=0.0)

    # Stage 1: only the projector trains.
    stage1 = train(TrainConfig(output_dir=str(work / "stage1"), stage=1, max_steps=15, lr=1e-2, **common))
    # Stage 2: LoRA on the LLM + the projector, starting from stage 1's projector.
    stage2 = train(TrainConfig(output_dir=str(work / "stage2"), stage=2, max_steps=25, lr=1e-2, projector_lr=1e-3,
                               init_from=str(stage1), **common))
    l1, l2 = losses(work / "stage1"), losses(work / "stage2")
    print(f"stage 1 loss {l1[0]:.3f} -> {l1[-1]:.3f}; stage 2 loss {l2[0]:.3f} -> {l2[-1]:.3f}")

    # One call rebuilds the trained model; ask it about videos it never saw.
    model, processor = load_trained(stage2)
    held_out = work / "held_out"
    held_out.mkdir(exist_ok=True)
    for i, (name, rgb) in enumerate(COLOURS.items()):
        video = write_video(held_out / f"{name}.mp4", rgb, args.num_frames, seed=1000 + i)
        inputs = processor([{"role": "user", "content": QUESTION}], videos=[video])
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        print(f"{name:>7} video -> {processor.batch_decode(out[:, inputs['input_ids'].shape[1]:])[0]!r}")

    merged = merge_trained(stage2, work / "merged")
    print(f"runs in {work}: stage1/, stage2/ (log.jsonl, loss.png, final/), merged model in {merged}")


if __name__ == "__main__":
    main()
