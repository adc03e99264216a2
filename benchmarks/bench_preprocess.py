"""Frame preprocessing speed: ours (uint8 tensors) vs transformers' CLIPImageProcessor (PIL).

The workload is LLaVA-NeXT-Video's: T decoded frames, uint8[T, H, W, 3], to float32[T, 3, S, S]
(shortest side to S, centre crop, CLIP normalisation). The frames are real photos from
scikit-image stretched to H x W and shifted per frame, so the resize sees real edges and texture.

The reference takes the frames as a list of numpy arrays (what LLaVA hands it) and resizes each
with PIL on one core. Ours takes the same frames as one uint8 tensor and resizes them in one call;
with `--device cuda` the uint8 frames are copied to the GPU first and processed there (timed with
and without that copy). The outputs are compared in normalised units (one grey level ~ 0.015).

    python benchmarks/bench_preprocess.py                        # CPU, 32 frames of 1280x720 -> 336
    python benchmarks/bench_preprocess.py --threads 1            # ours on one core, like PIL
    python benchmarks/bench_preprocess.py --device cuda --json out/preprocess_cuda.json
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np
import PIL.Image
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, median_time, print_table, write_json  # noqa: E402


def real_frames(count: int, height: int, width: int) -> np.ndarray:
    """uint8[T, H, W, 3]: scikit-image photos resized to H x W, cycled, each frame shifted sideways."""
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.stereo_motorcycle()[0]]
    stretched = [np.asarray(PIL.Image.fromarray(p).resize((width, height), PIL.Image.BICUBIC)) for p in photos]
    frames = [np.roll(stretched[i % len(stretched)], 37 * i, axis=1) for i in range(count)]
    return np.stack(frames)  # (T, H, W, 3)


def reference_processor(size: int):
    from transformers import CLIPImageProcessor

    from vlm_vision import CLIP_MEAN, CLIP_STD

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                  do_convert_rgb=True, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--size", type=int, default=336, help="output side S")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu", help="where ours runs: cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for ours (default: torch's)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()

    from vlm_vision import CLIPImageTransform

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    frames = real_frames(args.frames, args.height, args.width)  # (T, H, W, 3)
    processor = reference_processor(args.size)
    transform = CLIPImageTransform(image_size=args.size)

    frame_list = list(frames)
    t_ref = median_time(lambda: processor(images=frame_list, return_tensors="pt"), runs=args.runs, warmup=args.warmup)
    ref = processor(images=frame_list, return_tensors="pt")["pixel_values"]  # (T, 3, S, S)

    host = torch.from_numpy(frames)  # (T, H, W, 3) uint8
    on_device = host.to(device)
    t_ours = median_time(lambda: transform(on_device), runs=args.runs, warmup=args.warmup, device=device)
    ours = transform(on_device).cpu()  # (T, 3, S, S)
    diff = (ours - ref).abs()

    rows = [("path", "time", "vs reference", "max | mean abs diff"),
            ("transformers CLIPImageProcessor (PIL), numpy frames", f"{t_ref * 1e3:.1f} ms", "1.00x", "-"),
            (f"ours, uint8 tensor on {device}", f"{t_ours * 1e3:.1f} ms", f"{t_ref / t_ours:.2f}x",
             f"{diff.max().item():.4f} | {diff.mean().item():.5f}")]
    results = {"machine": machine(), "frames": list(frames.shape), "size": args.size, "device": device,
               "threads": torch.get_num_threads(), "runs": args.runs,
               "reference_ms": t_ref * 1e3, "ours_ms": t_ours * 1e3, "speedup": t_ref / t_ours,
               "max_abs_diff": diff.max().item(), "mean_abs_diff": diff.mean().item()}
    if device != "cpu":
        t_copy = median_time(lambda: transform(host.to(device, non_blocking=False)), runs=args.runs,
                             warmup=args.warmup, device=device)
        rows.append((f"ours, incl. uint8 copy host -> {device}", f"{t_copy * 1e3:.1f} ms",
                     f"{t_ref / t_copy:.2f}x", "same"))
        results["ours_with_copy_ms"] = t_copy * 1e3
    t, h, w, _ = frames.shape
    print_table(f"Preprocess {t} frames {w}x{h} uint8 -> ({t}, 3, {args.size}, {args.size}) float32, "
                f"median of {args.runs}, torch threads {torch.get_num_threads()}", rows)
    write_json(args.json, results)


if __name__ == "__main__":
    main()
