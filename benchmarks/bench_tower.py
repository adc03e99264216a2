"""Tower throughput and memory: ours vs transformers' CLIPVisionModel as LLaVA uses it.

Reference path: `CLIPVisionModel(output_hidden_states=True)`, then `hidden_states[-2][:, 1:]`: every
block runs and all 25 hidden states are kept. Ours runs the blocks up to the selected layer and
keeps nothing else. Same random weights, same inputs; features compared.

Each path runs in its own fresh process so its peak memory is its own.

    python benchmarks/bench_tower.py --variant ViT-L/14@336 --batch 2 --runs 3            # CPU
    python benchmarks/bench_tower.py --device cuda --dtype bfloat16 --batch 256 --compile --fp8  # GPU

`--compile` adds our tower under `torch.compile` (default mode), `--compile-mode reduce-overhead`
under CUDA graphs, and `--fp8` our tower with FP8 matmuls (`tower.to_fp8()`, bfloat16 only), whose
distance from the bfloat16 features is reported as the cosine similarity of each token to the
reference's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, median_time, peak_rss_mib, print_table, run_worker, write_json  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def save_reference(variant: str, folder: str) -> None:
    """Random weights for `variant`, written once as a transformers folder both paths load."""
    from transformers import CLIPVisionModel

    from vlm_vision import vision_config

    torch.manual_seed(0)
    CLIPVisionModel(vision_config(variant)).save_pretrained(folder)


def worker(args: argparse.Namespace) -> None:
    from transformers import CLIPVisionModel

    from vlm_vision import CLIPVisionTower, vision_config

    dtype, device = DTYPES[args.dtype], args.device
    cfg = vision_config(args.variant)
    torch.manual_seed(1)
    x = torch.randn(args.batch, 3, cfg.image_size, cfg.image_size)
    if args.path == "ours":
        model = CLIPVisionTower.from_pretrained(args.weights, dtype=dtype, device=device)
        if args.fp8:
            model.to_fp8()
        if args.compile:
            model.compile(**({"mode": args.compile_mode} if args.compile_mode else {}))
        fn = lambda: model(x_dev)  # noqa: E731
    else:
        model = CLIPVisionModel.from_pretrained(args.weights, attn_implementation="sdpa").eval()
        model = model.to(device=device, dtype=dtype)

        def fn():
            with torch.no_grad():
                return model(x_dev, output_hidden_states=True).hidden_states[-2][:, 1:]
    x_dev = x.to(device=device, dtype=dtype)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t = median_time(fn, runs=args.runs, warmup=args.warmup, device=device)
    out = fn().float().cpu()
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else peak_rss_mib()
    torch.save(out, args.out_features)
    print(json.dumps({"seconds": t, "images_per_s": args.batch / t, "peak_mib": peak}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="ViT-L/14@336")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--compile", action="store_true", help="also time our tower under torch.compile")
    p.add_argument("--compile-mode", default=None,
                   help="also time our tower under torch.compile with this mode (reduce-overhead: CUDA graphs)")
    p.add_argument("--fp8", action="store_true", help="also time our tower with FP8 matmuls (bfloat16 only)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--path", choices=["ours", "ref"], help=argparse.SUPPRESS)
    p.add_argument("--out-features", help=argparse.SUPPRESS)
    p.add_argument("--weights", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)

    import tempfile

    tmp = tempfile.mkdtemp()
    weights = os.path.join(tmp, "weights")
    save_reference(args.variant, weights)
    common = ["--worker", "--weights", weights, "--variant", args.variant, "--batch", str(args.batch), "--runs", str(args.runs),
              "--warmup", str(args.warmup), "--device", args.device, "--dtype", args.dtype]
    results = {}
    paths = [("ref", []), ("ours", [])]
    if args.compile:
        paths.append(("ours_compiled", ["--compile"]))
    if args.compile_mode:
        paths.append((f"ours_compiled_{args.compile_mode}", ["--compile", "--compile-mode", args.compile_mode]))
    if args.fp8:
        paths.append(("ours_fp8", ["--fp8"]))
        if args.compile:
            paths.append(("ours_fp8_compiled", ["--fp8", "--compile"]))
    ref_feat = None
    for name, extra in paths:
        feat = os.path.join(tmp, f"{name}.pt")
        try:
            results[name] = run_worker(__file__, common + ["--path", name.split("_")[0], "--out-features", feat] + extra)
        except subprocess.CalledProcessError as e:  # recorded, and the other paths still run
            print(f"{name} FAILED (exit {e.returncode}):\n{e.stderr[-3000:]}")
            results[name] = {"failed": e.stderr[-3000:]}
            continue
        features = torch.load(feat)
        os.remove(feat)
        if name == "ref":  # runs first
            ref_feat = features
        if ref_feat is not None:
            compare_with_reference(results, name, features, ref_feat)
        # Written after every path, so a run stopped part-way keeps what it measured.
        write_json(args.json, {"machine": machine(), "config": vars(args), "results": results}, quiet=True)
    rows = [("path", "images/s", "peak MiB", "max |diff| vs ref, min / mean token cosine")]
    for name, r in results.items():
        if "max_abs_diff" not in r:
            rows.append((name, "FAILED" if "failed" in r else f"{r['images_per_s']:.2f}", "", "no reference"))
            continue
        rows.append((name, f"{r['images_per_s']:.2f}", f"{r['peak_mib']:.0f}",
                     f"{r['max_abs_diff']:.2e}, {r['min_token_cosine']:.5f} / {r['mean_token_cosine']:.5f}"))
    for name, r in results.items():
        if name != "ref" and "speedup" in r:
            rows.append((f"{name} / ref", f"{r['speedup']:.2f}x", f"{r['memory_ratio']:.2f}x", ""))
    mem_kind = "peak GPU memory allocated" if args.device.startswith("cuda") else "peak process RSS"
    print_table(f"Tower {args.variant}, batch {args.batch}, {args.device} {args.dtype} ({mem_kind})", rows)
    write_json(args.json, {"machine": machine(), "config": vars(args), "results": results})
    shutil.rmtree(tmp, ignore_errors=True)


def compare_with_reference(results: dict, name: str, feat: torch.Tensor, ref_feat: torch.Tensor) -> None:
    """Add the distance from the reference's features, and speed and memory against it, to results[name]."""
    r, ref = results[name], results["ref"]
    cos = torch.nn.functional.cosine_similarity(feat, ref_feat, dim=-1)  # (B, N)
    r["max_abs_diff"] = (feat - ref_feat).abs().max().item()
    r["min_token_cosine"], r["mean_token_cosine"] = cos.min().item(), cos.mean().item()
    if name != "ref":
        r["speedup"] = r["images_per_s"] / ref["images_per_s"]
        r["memory_ratio"] = r["peak_mib"] / ref["peak_mib"]


if __name__ == "__main__":
    main()
