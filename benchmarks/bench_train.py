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
    python benchmarks/bench_train.py --device cuda --preset 7b --profile out/train_profile.txt

`--profile FILE` adds, per path, one more step under `torch.profiler` after the timed ones (the
timing and peak memory are unaffected) and appends where its time went to FILE: the forward of the
tower, projector and LLM, the backward and the optimizer step, then the operators that took most
time (device time on CUDA, CPU time otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, median_time, peak_rss_mib, print_table, run_worker, sync, write_json  # noqa: E402

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
        from vlm_vision.model.fusion_steps import encode_videos
        from vlm_vision.training.loss import labelled_loss
        from vlm_vision.training.params import mark_trainable

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
        from torch.profiler import record_function

        with record_function("phase: forward + loss"):
            # ours computes the loss the way `vlm-vision train` does (LM head only where a label follows)
            loss = model(**inputs).loss if args.path == "ref" else labelled_loss(model, inputs)
        with record_function("phase: backward"):
            loss.backward()
        with record_function("phase: optimizer"):
            opt.step()
            opt.zero_grad(set_to_none=True)
        losses.append(loss.item())

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t = median_time(step, runs=args.runs, warmup=args.warmup, device=device)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else peak_rss_mib()
    seq = inputs["input_ids"].numel()
    if args.profile:
        profile_step(step, _parts(model, args.path), device, args.profile, f"{args.path} ({args.preset}, {args.dtype})")
    print(json.dumps({"seconds": t, "tokens_per_s": seq / t, "peak_mib": peak, "first_loss": losses[0],
                      "sequence": seq, "trainable": sum(p.numel() for p in trainable)}))


def _parts(model, path: str) -> dict[str, torch.nn.Module]:
    """The modules whose forward the profile names: tower, projector, LLM (+ LM head for the reference)."""
    base = model.get_base_model() if path == "ref" else model
    if path == "ref":
        inner = base.model
        return {"vision tower": inner.vision_tower, "projector": inner.multi_modal_projector,
                "LLM": inner.language_model, "LM head": base.lm_head}
    return {"vision tower": base.tower, "projector": base.projector, "LLM": base.llm}


def _label_forward(module: torch.nn.Module, label: str) -> None:
    """Name `module`'s forward in profiles (a record_function range opened and closed by hooks)."""
    from torch.profiler import record_function

    ranges = []
    module.register_forward_pre_hook(lambda m, a: ranges.append(record_function(label).__enter__()))
    module.register_forward_hook(lambda m, a, o: ranges.pop().__exit__(None, None, None))


def profile_step(step, parts: dict[str, torch.nn.Module], device: str, path: str, title: str) -> None:
    """Run `step` once under the profiler; append phases, module forwards and top operators to `path`."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    for label, module in parts.items():
        _label_forward(module, f"forward: {label}")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
        sync(device)
    events = prof.key_averages()
    time_key = "device_time_total" if cuda else "cpu_time_total"
    lines = [f"\n===== {title}: one step on {device}", "range                               ms (CPU)  ms (device)"]
    for e in sorted((e for e in events if e.key.startswith(("phase:", "forward:"))), key=lambda e: e.key):
        lines.append(f"{e.key:35s} {e.cpu_time_total / 1e3:9.1f}  {getattr(e, 'device_time_total', 0) / 1e3:10.1f}")
    lines.append(events.table(sort_by=f"self_{time_key}", row_limit=20, max_name_column_width=60))
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")


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
    p.add_argument("--profile", metavar="FILE", help="append a profile of one more step of each path to FILE")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.worker:
        return worker(args)
    common = ["--worker", "--preset", args.preset, "--device", args.device, "--dtype", args.dtype,
              "--runs", str(args.runs), "--warmup", str(args.warmup)] + ([] if args.checkpointing else
                                                                         ["--no-checkpointing"])
    profile = ["--profile", os.path.abspath(args.profile)] if args.profile else []
    # Rounds alternate the paths, so a burst of load on this shared machine hits all of them alike.
    rounds: dict[str, list[dict]] = {name: [] for name in ("ref", "ours", "ours_cached")}
    results: dict[str, dict] = {}
    for i in range(args.rounds):
        for name in rounds:  # the first round also profiles (after its timed steps)
            try:
                rounds[name].append(run_worker(__file__, common + ["--path", name] + (profile if i == 0 else [])))
            except subprocess.CalledProcessError as e:  # recorded, and the other paths still run
                print(f"{name} FAILED (exit {e.returncode}):\n{e.stderr[-3000:]}")
                results[name] = {"failed": e.stderr[-3000:]}
                continue
            results[name] = best_round(rounds[name])
            add_ratios(results)
            # Written after every run, so a run stopped part-way keeps what it measured.
            write_json(args.json, {"machine": machine(), "config": vars(args), "results": results}, quiet=True)
    rows = [("path", "tokens/s", "peak MiB", "first loss")]
    for name, r in results.items():
        if "speedup" not in r:
            rows.append((name, "FAILED" if "failed" in r else "no reference", "", ""))
            continue
        rows.append((name, f"{r['tokens_per_s']:.1f} ({r['speedup']:.2f}x)", f"{r['peak_mib']:.0f} "
                     f"({r['memory_ratio']:.2f}x)", f"{r['first_loss']:.5f}"))
    mem = "peak GPU memory allocated" if args.device.startswith("cuda") else "peak process RSS"
    sequence = next((r["sequence"] for r in results.values() if "sequence" in r), "?")
    print_table(f"Train step ({args.preset}, {args.device} {args.dtype}, sequence {sequence}, "
                f"checkpointing {'on' if args.checkpointing else 'off'}; {mem})", rows)
    write_json(args.json, {"machine": machine(), "config": vars(args), "results": results})


def best_round(runs: list[dict]) -> dict:
    """The fastest of a path's rounds, with every round's time beside it."""
    return min(runs, key=lambda r: r["seconds"]) | {"seconds_all_rounds": [r["seconds"] for r in runs]}


def add_ratios(results: dict[str, dict]) -> None:
    """Speed and memory of every measured path against the reference's, once it has been measured."""
    ref = results.get("ref", {})
    if "tokens_per_s" not in ref:
        return
    for r in results.values():
        if "tokens_per_s" in r:
            r["speedup"] = r["tokens_per_s"] / ref["tokens_per_s"]
            r["memory_ratio"] = r["peak_mib"] / ref["peak_mib"]


if __name__ == "__main__":
    main()
