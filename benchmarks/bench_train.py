"""One LoRA training step: ours vs transformers' LlavaNextVideoForConditionalGeneration + peft.

Both paths start from the same random weights (the same seeded transformers model), apply LoRA on
the LLM's q/k/v/o/gate/up/down, train the projector, keep the tower frozen, and take AdamW steps on
the same batch: one video of T frames and a short text, labels -100 on the visual tokens. Ours is
`VisionLanguageModel.from_llava_next_video(model)` set up as `vlm-vision train --stage 2` sets it up
(`mark_trainable`), with the loss as `vlm-vision train` computes it (`labelled_loss`: the LM head
runs only where a label follows; `--preset small-32k` shows what that saves with a 7B's
vocabulary). A third path feeds ours the pooled tower tokens that `vlm-vision extract` would
have cached (the tower is then not run at all).

Each path runs in a fresh process so its peak memory (GPU allocator peak, or process RSS on the CPU)
is its own. Reported: median seconds per step, tokens/s (sequence length x batch / step time),
peak memory, the first step's loss (it must agree between paths).

    python benchmarks/bench_train.py                                  # CPU, small preset
    python benchmarks/bench_train.py --device cuda --preset 7b        # the 7B-shaped config of BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, median_time, peak_rss_mib, print_table, run_worker, write_json  # noqa: E402

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# name -> (text config, vision config, frames, text tokens, lora r, lora alpha)
PRESETS = {
    "small": (dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=4, vocab_size=4096),
              dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                   image_size=112, patch_size=14), 8, 64, 16, 32),
    # the small models with a 7B's vocabulary and 32 frames: where the LM head's logits matter
    "small-32k": (dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=4, vocab_size=32064),
                  dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                       image_size=112, patch_size=14), 32, 64, 16, 32),
    "7b": (dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32064),
           dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                image_size=336, patch_size=14), 32, 64, 128, 256),
}
VIDEO_ID, IMAGE_ID = 3, 4


def build_reference(preset: str, dtype: torch.dtype, device: str = "cpu"):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration

    text, vision, *_ = PRESETS[preset]
    config = LlavaNextVideoConfig(text_config=LlamaConfig(**text).to_dict(),
                                  vision_config=CLIPVisionConfig(**vision).to_dict(),
                                  video_token_index=VIDEO_ID, image_token_index=IMAGE_ID,
                                  spatial_pool_stride=2, spatial_pool_mode="average", vision_feature_layer=-2)
    torch.manual_seed(0)
    if preset != "7b":
        return LlavaNextVideoForConditionalGeneration(config).to(dtype)
    # 7B: random weights made on the device in the target dtype, never a float32 CPU copy.
    with torch.device("meta"):
        model = LlavaNextVideoForConditionalGeneration(config).to(dtype)
    model = model.to_empty(device=device)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return model


def batch(preset: str, device: str):
    _, vision, frames, text_tokens, *_ = PRESETS[preset]
    grid = vision["image_size"] // vision["patch_size"]
    video_tokens = frames * (grid // 2) ** 2
    g = torch.Generator().manual_seed(1)
    text = torch.randint(10, PRESETS[preset][0]["vocab_size"], (1, text_tokens), generator=g)
    input_ids = torch.cat([text[:, :8], torch.full((1, video_tokens), VIDEO_ID), text[:, 8:]], dim=1)  # (1, L)
    labels = input_ids.clone()
    labels[:, : 8 + video_tokens] = -100  # the prompt and the visual span carry no loss
    pixels = torch.randn(1, frames, 3, vision["image_size"], vision["image_size"], generator=g)  # (1, T, 3, S, S)
    return {k: v.to(device) for k, v in dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                               labels=labels, pixel_values_videos=pixels).items()}


def worker(args: argparse.Namespace) -> None:
    from peft import LoraConfig, get_peft_model

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    device = args.device
    *_, r, alpha = PRESETS[args.preset]
    hf = build_reference(args.preset, dtype, device)
    inputs = batch(args.preset, "cpu")
    if args.path == "ref":
        model = hf
        if args.checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, bias="none",
                          target_modules=r".*language_model.*\.(" + "|".join(LORA_TARGETS) + ")")
        model = get_peft_model(model, lora)
        for name, p in model.named_parameters():
            if "multi_modal_projector" in name:
                p.requires_grad_(True)
    else:
        from vlm_vision import TrainConfig, VisionLanguageModel
        from vlm_vision.fusion import encode_videos
        from vlm_vision.train_loss import labelled_loss
        from vlm_vision.train_params import mark_trainable

        model = VisionLanguageModel.from_llava_next_video(hf)
        del hf
        if args.path == "ours_cached":  # what `vlm-vision extract` would have written: pooled tower tokens
            with torch.no_grad():
                inputs["video_features"] = encode_videos(model.tower, list(inputs.pop("pixel_values_videos")),
                                                         stride=2, mode="average")
        if args.checkpointing:
            model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.llm.enable_input_require_grads()
        model.llm.config.use_cache = False
        model.llm = get_peft_model(model.llm, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, bias="none",
                                                         target_modules=LORA_TARGETS))
        cfg = TrainConfig(llm="-", tower="-", data="-", output_dir="-", stage=2, lora_r=r, lora_alpha=alpha)
        mark_trainable(model, cfg, [])
    model.to(device)
    model.train()
    inputs = {k: ([t.to(device) for t in v] if isinstance(v, list) else v.to(device)) for k, v in inputs.items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-5)
    losses = []

    def step():
        # ours computes the loss the way `vlm-vision train` does (LM head only where a label follows)
        loss = model(**inputs).loss if args.path == "ref" else labelled_loss(model, inputs)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t = median_time(step, runs=args.runs, warmup=args.warmup, device=device)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else peak_rss_mib()
    seq = inputs["input_ids"].numel()
    print(json.dumps({"seconds": t, "tokens_per_s": seq / t, "peak_mib": peak, "first_loss": losses[0],
                      "sequence": seq, "trainable": sum(p.numel() for p in trainable)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small", choices=sorted(PRESETS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="default: float32 on the CPU, bfloat16 on CUDA")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2, help="fresh processes per path, alternating; best kept")
    p.add_argument("--no-checkpointing", dest="checkpointing", action="store_false")
    p.add_argument("--json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.worker:
        return worker(args)
    common = ["--worker", "--preset", args.preset, "--device", args.device, "--dtype", args.dtype,
              "--runs", str(args.runs), "--warmup", str(args.warmup)] + ([] if args.checkpointing else
                                                                         ["--no-checkpointing"])
    # Rounds alternate the paths, so a burst of load on this shared machine hits all of them alike.
    rounds: dict[str, list[dict]] = {name: [] for name in ("ref", "ours", "ours_cached")}
    for _ in range(args.rounds):
        for name in rounds:
            rounds[name].append(run_worker(__file__, common + ["--path", name]))
    results = {name: min(rs, key=lambda r: r["seconds"]) | {"seconds_all_rounds": [r["seconds"] for r in rs]}
               for name, rs in rounds.items()}
    ref = results["ref"]
    rows = [("path", "tokens/s", "peak MiB", "first loss")]
    for name, r in results.items():
        r["speedup"] = r["tokens_per_s"] / ref["tokens_per_s"]
        r["memory_ratio"] = r["peak_mib"] / ref["peak_mib"]
        rows.append((name, f"{r['tokens_per_s']:.1f} ({r['speedup']:.2f}x)", f"{r['peak_mib']:.0f} "
                     f"({r['memory_ratio']:.2f}x)", f"{r['first_loss']:.5f}"))
    mem = "peak GPU memory allocated" if args.device.startswith("cuda") else "peak process RSS"
    print_table(f"Train step ({args.preset}, {args.device} {args.dtype}, sequence {ref['sequence']}, "
                f"checkpointing {'on' if args.checkpointing else 'off'}; {mem})", rows)
    write_json(args.json, {"machine": machine(), "config": vars(args), "results": results})


if __name__ == "__main__":
    main()
