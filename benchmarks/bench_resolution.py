"""Memory and speed of `vlm-vision extract` against the source's resolution: full-resolution frames
(`--full-resolution-frames`, the path of earlier versions) and frames resized in the decoder
process (the default, `video.frame_scale`), side by side.

A folder of 3-second clips at 480p, 720p, 1080p and 4K, all the same content: a slow pan over a
real photograph (scikit-image's `astronaut` and `coffee`, placed side by side and resized to the
frame with PIL's Lanczos), written once with PyAV (H.264, yuv420p, keyframe every 30 frames) and
cached. Each run is one `vlm-vision extract --num-frames 32 --workers 2` process of one clip with a
small random tower of the real input side (336 px, 2 blocks, width 64; the tower is not what is
measured), its memory polled every 100 ms: the peak of the summed PSS (proportional set size,
shared pages split between the processes that map them) of the whole process tree (the command,
its DataLoader workers, their decoder processes). Runs go in turns (each resolution, each path,
then again), so that load from elsewhere falls on all of them alike; medians of `--runs`.

    python benchmarks/bench_resolution.py --runs 3 --json benchmarks/results/resolution_cpu.json \
        --plot benchmarks/results/resolution_cpu.png
    python benchmarks/bench_resolution.py --part pipeline --runs 7 \
        --json benchmarks/results/resolution_pipeline_cpu.json
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import psutil

sys.path.insert(0, os.path.dirname(__file__))
from _common import machine, print_table, write_json  # noqa: E402

RESOLUTIONS = {"480p": (854, 480), "720p": (1280, 720), "1080p": (1920, 1080), "4K": (3840, 2160)}
CACHE = pathlib.Path(tempfile.gettempdir()) / "vlm_vision_bench" / "resolutions"
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=336,
            patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5)
FPS, SECONDS = 30, 3


def make_clip(path: pathlib.Path, width: int, height: int) -> pathlib.Path:
    """A `SECONDS`-second pan over two real photographs, `width` x `height`, written once."""
    if path.exists():
        return path
    import av
    import PIL.Image
    from skimage import data

    photos = [PIL.Image.fromarray(data.astronaut()), PIL.Image.fromarray(data.coffee())]
    scene_h = int(height * 1.1)
    scaled = [p.resize((round(p.width * scene_h / p.height), scene_h), PIL.Image.Resampling.LANCZOS) for p in photos]
    scene = np.concatenate([np.asarray(p) for p in scaled], axis=1)  # (H', W', 3)
    while scene.shape[1] < width * 1.3:
        scene = np.concatenate([scene, scene[:, ::-1]], axis=1)  # mirrored: no seam
    steps = FPS * SECONDS
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.mp4")
    with av.open(str(partial), "w") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"crf": "23", "preset": "veryfast",
                                                                     "x264-params": "keyint=30:min-keyint=30"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(steps):
            x = round((scene.shape[1] - width) * i / steps)
            y = round((scene_h - height) * i / steps)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(scene[y:y + height, x:x + width]), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    partial.rename(path)
    return path


def tree_pss(root: psutil.Process) -> int:
    """Summed PSS (bytes) of `root` and all its descendants; processes that end meanwhile count 0."""
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return total


def tree_cpu(root: psutil.Process) -> float:
    """CPU seconds (user + system) used so far by `root` and its live descendants (the decoder processes)."""
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return total


def tree_rss(root: psutil.Process) -> int:
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return total


def run_once(video: pathlib.Path, weights: pathlib.Path, out: pathlib.Path, full: bool, frames: int) -> dict:
    """One extract process; its wall time and the peaks of its tree's summed PSS and RSS."""
    argv = [sys.executable, "-c", "import sys; from vlm_vision.commands.main import main; sys.exit(main())", "extract",
            str(video), "--out", str(out), "--model", str(weights), "--num-frames", str(frames), "--overwrite"]
    if full:
        argv.append("--full-resolution-frames")
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = psutil.Process(proc.pid)
    pss = rss = 0
    while proc.poll() is None:
        pss, rss = max(pss, tree_pss(root)), max(rss, tree_rss(root))
        time.sleep(0.1)
    seconds = time.perf_counter() - t0
    stderr = proc.stderr.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}: {stderr[-2000:]}")
    return {"seconds": seconds, "peak_pss": pss, "peak_rss": rss}


def pipeline(videos: dict[str, pathlib.Path], runs: int, frames: int) -> dict:
    """What a decoding worker does, in this process: `load_video` + the 336-px transform, both paths in turns.

    Without the command's start-up (torch, the tower; 20-40 s on the loaded machine), which buried the
    4K-over-720p difference in noise in the whole-command runs.
    """
    import torch

    from video import load_video
    from vlm_vision.model.transforms import CLIPImageTransform

    torch.set_num_threads(1)  # as in extract's decoding workers
    transform = CLIPImageTransform(336)
    paths = {"full resolution": None, "resized in the decoder": transform.frame_scale()}
    for scale in paths.values():  # start the decoder process (and its torch) before timing
        load_video(next(iter(videos.values())), num_frames=2, frame_scale=scale)
    times: dict[str, dict[str, list[float]]] = {n: {p: [] for p in paths} for n in videos}
    cpu: dict[str, dict[str, list[float]]] = {n: {p: [] for p in paths} for n in videos}
    for _ in range(runs):
        for name, video in videos.items():
            for path_name, scale in paths.items():
                c0, t0 = tree_cpu(psutil.Process()), time.perf_counter()
                transform(load_video(video, num_frames=frames, frame_scale=scale).frames)
                times[name][path_name].append(time.perf_counter() - t0)
                cpu[name][path_name].append(tree_cpu(psutil.Process()) - c0)
    out = {n: {p: {"median_s": statistics.median(t), "seconds": t, "frames_per_s": frames / statistics.median(t),
                   "median_cpu_s": statistics.median(cpu[n][p]), "cpu_seconds": cpu[n][p]}
               for p, t in by.items()} for n, by in times.items()}
    if "720p" in out and "4K" in out:
        extra = {p: out["4K"][p]["median_s"] - out["720p"][p]["median_s"] for p in paths}
        out["extra_4k_over_720p_s"] = extra
        out["extra_4k_over_720p_cpu_s"] = {p: out["4K"][p]["median_cpu_s"] - out["720p"][p]["median_cpu_s"]
                                           for p in paths}
        out["extra_time_ratio_new_over_old"] = extra["resized in the decoder"] / extra["full resolution"]
    return out


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(RESOLUTIONS)
    pixels = [RESOLUTIONS[n][0] * RESOLUTIONS[n][1] / 1e6 for n in names]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for path_name, style in (("full resolution", "o--"), ("resized in the decoder", "o-")):
        for ax, key, label in ((axes[0], "peak_rss", "peak RSS"), (axes[1], "peak_pss", "peak PSS")):
            ax.plot(pixels, [results[n][path_name][key] / 2**20 for n in names], style, label=path_name)
            ax.set_title(f"{label}, whole process tree")
            ax.set_xlabel("source megapixels (log scale)")
            ax.set_ylabel("MiB")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xticks(pixels, [f"{n}\n{p:.1f}" for n, p in zip(names, pixels)])
        ax.minorticks_off()
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle("vlm-vision extract, 32 frames, 336-px tower: memory against source resolution (medians)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=None)
    parser.add_argument("--only", nargs="*", default=list(RESOLUTIONS), choices=list(RESOLUTIONS))
    parser.add_argument("--part", choices=("command", "pipeline"), default="command",
                        help="command: whole `vlm-vision extract` processes (memory, time); pipeline: decode + "
                             "transform in this process (time only)")
    args = parser.parse_args(argv)
    if args.part == "pipeline":
        videos = {name: make_clip(CACHE / f"pan_{name}.mp4", *RESOLUTIONS[name]) for name in args.only}
        out = pipeline(videos, args.runs, args.frames)
        for name in videos:
            for path_name, r in out[name].items():
                print(f"{name:6s} {path_name:24s} {r['median_s']:.2f} s  {r['frames_per_s']:.1f} frames/s  "
                      f"CPU {r['median_cpu_s']:.2f} s")
        print({k: out[k] for k in ("extra_4k_over_720p_s", "extra_4k_over_720p_cpu_s", "extra_time_ratio_new_over_old")
               if k in out})
        write_json(args.json, {"machine": machine(), "frames": args.frames, "runs": args.runs, "results": out})
        return 0
    from transformers import CLIPVisionConfig, CLIPVisionModel

    videos = {name: make_clip(CACHE / f"pan_{name}.mp4", *RESOLUTIONS[name]) for name in args.only}
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        weights = root / "tiny_clip"
        CLIPVisionModel(CLIPVisionConfig(**TINY)).save_pretrained(weights)
        paths = {"full resolution": True, "resized in the decoder": False}
        raw = {n: {p: [] for p in paths} for n in videos}
        for _ in range(args.runs):
            for name, video in videos.items():
                for path_name, full in paths.items():
                    raw[name][path_name].append(run_once(video, weights, root / "out", full, args.frames))
    results = {n: {p: {key: statistics.median(r[key] for r in runs) for key in ("seconds", "peak_pss", "peak_rss")}
                   | {"runs": runs} for p, runs in by_path.items()} for n, by_path in raw.items()}
    for by_path in results.values():
        for r in by_path.values():
            r["frames_per_s"] = args.frames / r["seconds"]
    rows = []
    for name, by_path in results.items():
        for path_name, r in by_path.items():
            rows.append((f"{name} {path_name}", f"{r['seconds']:.2f} s", f"{r['frames_per_s']:.1f} frames/s",
                         f"PSS {r['peak_pss'] / 2**20:.0f} MiB, RSS {r['peak_rss'] / 2**20:.0f} MiB"))
    print_table("vlm-vision extract, one clip, whole process tree (medians)", rows)
    summary = {}
    if "720p" in results and "4K" in results:
        for path_name in ("full resolution", "resized in the decoder"):
            k4, k7 = results["4K"][path_name], results["720p"][path_name]
            summary[path_name] = {"pss_4k_over_720p": k4["peak_pss"] / k7["peak_pss"],
                                  "extra_seconds_4k_over_720p": k4["seconds"] - k7["seconds"]}
        summary["extra_time_ratio_new_over_old"] = (summary["resized in the decoder"]["extra_seconds_4k_over_720p"]
                                                    / summary["full resolution"]["extra_seconds_4k_over_720p"])
        print(summary)
    write_json(args.json, {"machine": machine(), "frames": args.frames, "runs": args.runs, "results": results,
                           "summary": summary})
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
