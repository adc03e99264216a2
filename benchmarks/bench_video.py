"""Video to tokens on the CPU: our extraction against the reference LLaVA-NeXT-Video pipeline.

The tower is tiny (2 blocks, width 64) but keeps the real input side and patch grid (336 px,
24x24 patches -> 144 pooled tokens), so what is timed is what dominates a corpus run on a GPU
machine's CPU side: decoding and preprocessing. Both pipelines get the same random weights.

Reference (what LLaVA-NeXT-Video's demo and transformers' docs do, reference §3.1-3.3):
    decord `VideoReader(path).get_batch(linspace(0, total - 1, 32))` -> transformers
    `CLIPImageProcessor` (PIL) -> `CLIPVisionModel(output_hidden_states=True).hidden_states[-2][:, 1:]`
    -> transformers' `LlavaNextVideoPooler` (2x2 average).
Ours:
    `video.extract_video_tokens(path, tower)` for one clip, and `vlm-vision extract` over a folder
    with `--workers 0/1/2` (decoding in background processes, overlapped with the tower).

Part 1 times one 32-frame clip of the 60 s 1280x720 video of BENCHMARKS.md (written once with
PyAV by `bench_decode.make_benchmark_video`), both pipelines in turns, median of `--runs`, and
compares the tokens. Part 2 times a folder of `--folder-videos` such videos (hard links of the one
file), the reference as a plain loop and ours through the CLI at each `--workers` count, and
reports videos/s and frames/s.

    python benchmarks/bench_video.py --runs 5 --json out/bench_video.json
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time
import types

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import cores_busy, cpu_jiffies, machine, print_table, write_json  # noqa: E402

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=336,
            patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5)
DEFAULT_VIDEO = pathlib.Path(tempfile.gettempdir()) / "vlm_vision_bench" / "bench_60s_720p_gop60.mp4"


def benchmark_video(path: pathlib.Path | None) -> pathlib.Path:
    if path is not None:
        return path
    if not DEFAULT_VIDEO.exists():
        from bench_decode import make_benchmark_video

        print(f"writing {DEFAULT_VIDEO} (once, about a minute) ...", flush=True)
        make_benchmark_video(DEFAULT_VIDEO)
    return DEFAULT_VIDEO


class Reference:
    """The reference pipeline, built once from a transformers folder."""

    def __init__(self, weights: pathlib.Path, num_frames: int):
        import warnings

        from transformers import CLIPImageProcessor, CLIPVisionModel
        from transformers.models.llava_next_video.modeling_llava_next_video import LlavaNextVideoPooler

        self.model = CLIPVisionModel.from_pretrained(weights, attn_implementation="sdpa").eval()
        side = self.model.config.image_size
        with warnings.catch_warnings():  # without torchvision it falls back to the PIL processor, as intended
            warnings.simplefilter("ignore")
            self.processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
        pool_config = types.SimpleNamespace(spatial_pool_mode="average", spatial_pool_stride=2,
                                            vision_config=self.model.config)
        self.pooler = LlavaNextVideoPooler(pool_config)
        self.num_frames = num_frames

    def frames(self, path: pathlib.Path) -> np.ndarray:
        import decord

        reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
        indices = np.linspace(0, len(reader) - 1, self.num_frames, dtype=int)
        return reader.get_batch(indices).asnumpy()  # (T, H, W, 3)

    def __call__(self, path: pathlib.Path) -> torch.Tensor:
        frames = self.frames(path)
        pixels = self.processor(images=list(frames), return_tensors="pt")["pixel_values"]  # (T, 3, S, S)
        with torch.no_grad():
            hidden = self.model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]  # (T, N, D)
            return self.pooler(hidden)  # (T, N', D)


def one_clip(video: pathlib.Path, weights: pathlib.Path, args) -> dict:
    """Part 1: one 32-frame clip, both pipelines in turns."""
    from video import extract_video_tokens, load_video
    from vlm_vision import CLIPVisionTower

    reference = Reference(weights, args.frames)
    tower = CLIPVisionTower.from_pretrained(weights)
    ours = lambda: extract_video_tokens(video, tower, num_frames=args.frames).tokens  # noqa: E731
    ref_tokens, our_tokens = reference(video), ours()  # warm-up (starts our decoder process once)
    times: dict[str, list[float]] = {"reference": [], "ours": []}
    for _ in range(args.runs):
        for name, fn in (("reference", lambda: reference(video)), ("ours", ours)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    median = {k: statistics.median(v) for k, v in times.items()}

    frame_diff = int((torch.from_numpy(reference.frames(video)).int()
                      - load_video(video, num_frames=args.frames).frames.int()).abs().max())
    token_diff = float((our_tokens - ref_tokens).abs().max())
    token_scale = float(ref_tokens.abs().max())
    # Same frames through both preprocessors: what is left is the preprocessing tolerance alone.
    frames = reference.frames(video)
    ref_pixels = reference.processor(images=list(frames), return_tensors="pt")["pixel_values"]
    pixel_diff = float((tower.image_transform(torch.from_numpy(frames)) - ref_pixels).abs().max())
    return {"median_s": median, "seconds": times, "speedup": median["reference"] / median["ours"],
            "tokens_shape": list(our_tokens.shape), "max_abs_token_diff": token_diff, "token_abs_max": token_scale,
            "max_abs_frame_diff_uint8": frame_diff, "max_abs_pixel_diff_normalised": pixel_diff}


def folder(video: pathlib.Path, weights: pathlib.Path, args, root: pathlib.Path) -> dict:
    """Part 2: a folder of videos; the reference loop vs the CLI at each worker count."""
    from vlm_vision.commands.extract import add_arguments, run

    videos = root / "videos"
    videos.mkdir()
    for i in range(args.folder_videos):
        target = videos / f"clip{i:02d}{video.suffix}"
        try:
            os.link(video, target)
        except OSError:
            shutil.copy(video, target)
    reference = Reference(weights, args.frames)
    paths = sorted(videos.iterdir())
    n, frames = len(paths), len(paths) * args.frames

    def cli(workers: int) -> None:
        out = root / "out"
        shutil.rmtree(out, ignore_errors=True)
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        argv = [str(videos), "--out", str(out), "--model", str(weights), "--num-frames", str(args.frames),
                "--workers", str(workers)]
        with open(os.devnull, "w") as null:
            stdout, stderr = sys.stdout, sys.stderr
            sys.stdout = sys.stderr = null
            try:
                code = run(parser.parse_args(argv))
            finally:
                sys.stdout, sys.stderr = stdout, stderr
        if code != 0:
            errors = [line for line in (out / "manifest.jsonl").read_text().splitlines() if '"error"' in line]
            raise RuntimeError(f"vlm-vision extract {' '.join(argv)} exited with {code}: {errors}")

    # The reference loops over the files in one process, as LLaVA-NeXT's scripts do. All pipelines
    # run in turns, so that load from elsewhere on a shared machine falls on all of them alike.
    pipelines = {"reference": lambda: [reference(p) for p in paths]}
    for workers in args.workers:
        pipelines[f"extract --workers {workers}"] = lambda w=workers: cli(w)
    times: dict[str, list[float]] = {name: [] for name in pipelines}
    busy: dict[str, list[float]] = {name: [] for name in pipelines}
    for _ in range(args.folder_runs):
        for name, fn in pipelines.items():
            t0, j0 = time.perf_counter(), cpu_jiffies()
            fn()
            times[name].append(time.perf_counter() - t0)
            cores = cores_busy(j0, cpu_jiffies())
            if cores is not None:
                busy[name].append(cores)
    results = {name: {"median_s": statistics.median(t), "seconds": t,
                      "cores_busy": statistics.median(busy[name]) if busy[name] else None}
               for name, t in times.items()}
    for r in results.values():
        r["videos_per_s"] = n / r["median_s"]
        r["frames_per_s"] = frames / r["median_s"]
        r["speedup"] = results["reference"]["median_s"] / r["median_s"]
    return {"videos": n, "results": results}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", type=pathlib.Path, default=None, help="a 720p video (default: generate BENCHMARKS.md's)")
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--runs", type=int, default=5, help="timed runs of part 1 (median)")
    p.add_argument("--folder-videos", type=int, default=4, help="videos in the part 2 folder (0 skips part 2)")
    p.add_argument("--folder-runs", type=int, default=3, help="timed runs of part 2 (median)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="--workers values for part 2")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    from transformers import CLIPVisionConfig, CLIPVisionModel

    video = benchmark_video(args.video)
    root = pathlib.Path(tempfile.mkdtemp(prefix="bench_video_"))
    try:
        weights = root / "tiny_clip"
        torch.manual_seed(0)
        CLIPVisionModel(CLIPVisionConfig(**TINY)).save_pretrained(weights)
        clip = one_clip(video, weights, args)
        rows = [("pipeline", "median s", "speed", ""),
                ("reference (decord + CLIPImageProcessor + CLIPVisionModel + pooler)",
                 f"{clip['median_s']['reference']:.3f}", "1.00x", ""),
                ("ours: extract_video_tokens", f"{clip['median_s']['ours']:.3f}", f"{clip['speedup']:.2f}x", "")]
        print_table(f"One clip: {args.frames} frames of {video.name} -> tokens {tuple(clip['tokens_shape'])}, "
                    f"tiny tower, CPU ({torch.get_num_threads()} threads), median of {args.runs}", rows)
        print(f"  tokens max |diff| {clip['max_abs_token_diff']:.2e} (token scale {clip['token_abs_max']:.2f}); "
              f"frames max |diff| {clip['max_abs_frame_diff_uint8']} grey levels; preprocessed pixels on the same "
              f"frames max |diff| {clip['max_abs_pixel_diff_normalised']:.4f} (one grey level ~ 0.015)")
        result = {"machine": machine(), "config": {k: str(v) for k, v in vars(args).items()}, "one_clip": clip}
        if args.folder_videos:
            many = folder(video, weights, args, root)
            rows = [("pipeline", "median s", "videos/s", "frames/s", "speed", "cores busy")]
            for name, r in many["results"].items():
                cores = "n/a" if r["cores_busy"] is None else f"{r['cores_busy']:.2f} of {os.cpu_count()}"
                rows.append((name, f"{r['median_s']:.2f}", f"{r['videos_per_s']:.3f}", f"{r['frames_per_s']:.1f}",
                             f"{r['speedup']:.2f}x", cores))
            print(f"\nFolder: {many['videos']} x {video.name}, {args.frames} frames each, median of {args.folder_runs}"
                  " (cores busy: machine-wide average over the run, process start-up included)")
            widths = [max(len(r[i]) for r in rows) for i in range(6)]
            for r in rows:
                print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)))
            result["folder"] = many
        write_json(args.json, result)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
