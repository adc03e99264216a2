"""Decoding 32 uniformly spaced frames: decord's `get_batch` against our `load_video`.

The video is the one BENCHMARKS.md describes: 60 s of 1280x720 H.264 at 30 fps with a keyframe
every 60 frames. It is written once with PyAV into a temporary folder (about a minute) and reused;
its content is a panned random texture under moving rings and per-frame grain, so that every
frame carries residual like real footage (about 6 Mbit/s) rather than compressing to nothing.

Four ways are timed, each from opening the file to an RGB uint8 array of 32 frames, in turns so
that load on a shared machine falls on all of them alike; the median of `--repeats` runs is kept:

- decord `VideoReader(path).get_batch(indices)`, in this process (what LLaVA-NeXT does);
- `load_video(path, num_frames=32)`: the same frames, exact (PyAV in our worker process, every
  frame checked against the timestamp index), sent back over a socket;
- `load_video(path, num_frames=32, sampling="keyframe")`: nearest keyframes, one packet each;
- `load_video(path, num_frames=32, backend="decord")`: decord's `get_batch` again, run in our worker
  (the frames come back over the socket) after the exact decoder has checked that the last frame
  exists: the difference from the first row is what the worker and the check cost.

The worker process starts once per Python process (its start is not timed; it is reported).

Run: `python benchmarks/bench_decode.py --json out/bench_decode.json`
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import tempfile
import time

import numpy as np

WIDTH, HEIGHT, FPS, SECONDS, GOP = 1280, 720, 30, 60, 60


def make_benchmark_video(path: pathlib.Path, seconds: int = SECONDS) -> pathlib.Path:
    """Write the benchmark video (H.264, yuv420p, keyframe every `GOP` frames) to `path`."""
    import av

    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, size=(HEIGHT // 8 + 40, WIDTH // 8 + 200, 3), dtype=np.uint8)
    texture = texture.repeat(8, 0).repeat(8, 1)  # (H', W', 3) blocky texture to pan across
    grain = [rng.integers(-5, 6, size=(HEIGHT, WIDTH, 1), dtype=np.int16) for _ in range(16)]
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    radius = np.hypot(yy - HEIGHT / 2, xx - WIDTH / 2)
    options = {"crf": "26", "preset": "veryfast", "x264-params": f"keyint={GOP}:min-keyint={GOP}:scenecut=0"}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.mp4")
    with av.open(str(partial), "w") as container:
        stream = container.add_stream("libx264", rate=FPS, options=options)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for i in range(FPS * seconds):
            dx, dy = (3 * i) % (texture.shape[1] - WIDTH), (i // 2) % (texture.shape[0] - HEIGHT)
            rings = 48 * np.sin(radius / (20 + 10 * np.sin(i / 25.0)) - i / 5.0)  # (H, W)
            image = texture[dy : dy + HEIGHT, dx : dx + WIDTH].astype(np.int16) // 2 + 64
            image += rings.astype(np.int16)[..., None] + grain[rng.integers(16)]  # (H, W, 3)
            frame = av.VideoFrame.from_ndarray(np.clip(image, 0, 255).astype(np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    partial.rename(path)
    return path


def _decord_get_batch(path: str, indices: list[int]) -> np.ndarray:
    import decord

    reader = decord.VideoReader(path, ctx=decord.cpu(0))
    return reader.get_batch(indices).asnumpy()  # (T, H, W, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--video", type=pathlib.Path, default=None, help="video to decode (default: generate one)")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=pathlib.Path, default=None, help="write the results here")
    args = parser.parse_args(argv)

    from video import load_video, uniform_indices
    from video.decode import shutdown_worker

    path = args.video or pathlib.Path(tempfile.gettempdir()) / "vlm_vision_bench" / "bench_60s_720p_gop60.mp4"
    if not path.exists():
        print(f"writing {path} ...", flush=True)
        make_benchmark_video(path)
    import decord

    reader = decord.VideoReader(str(path))
    total, fps, keys = len(reader), reader.get_avg_fps(), reader.get_key_indices()
    del reader
    indices = uniform_indices(total, args.frames)

    # One untimed call each: the worker process starts once per Python process, not per video.
    shutdown_worker()
    start = time.perf_counter()
    load_video(path, num_frames=1)
    first_call = time.perf_counter() - start
    reference = _decord_get_batch(str(path), indices)
    exact = load_video(path, num_frames=args.frames)
    keyframe = load_video(path, num_frames=args.frames, sampling="keyframe")
    via_worker = load_video(path, num_frames=args.frames, backend="decord")
    same = bool(np.array_equal(exact.frames.numpy(), reference))
    decord_same = bool(np.array_equal(via_worker.frames.numpy(), reference))
    on_keys = all(i in set(keys) for i in keyframe.indices)

    methods = {
        "decord_get_batch": lambda: _decord_get_batch(str(path), indices),
        "load_video_exact": lambda: load_video(path, num_frames=args.frames),
        "load_video_keyframe": lambda: load_video(path, num_frames=args.frames, sampling="keyframe"),
        "load_video_decord": lambda: load_video(path, num_frames=args.frames, backend="decord"),
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, run in methods.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    shutdown_worker()

    median = {name: statistics.median(values) for name, values in times.items()}
    base = median["decord_get_batch"]
    print(f"video: {path.name}, {total} frames, {fps:.2f} fps, {len(keys)} keyframes; {args.frames} frames")
    print(f"{'method':<22}{'median s':>10}{'speed vs get_batch':>20}")
    for name, value in median.items():
        print(f"{name:<22}{value:>10.3f}{base / value:>19.2f}x")
    print(f"first call (starts the worker process, opens the file, 1 frame): {first_call:.3f} s")
    print(f"exact frames identical to get_batch: {same}; keyframe mode on keyframes: {on_keys}; "
          f"keyframe shift max {max(abs(s) for s in keyframe.timestamp_shift):.3f} s")
    print(f"decord backend identical to get_batch: {decord_same}; its overhead over get_batch: "
          f"{median['load_video_decord'] - base:+.3f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "video": {"path": str(path), "frames": total, "fps": fps, "keyframes": len(keys),
                      "width": WIDTH, "height": HEIGHT},
            "num_frames": args.frames,
            "repeats": args.repeats,
            "seconds": times,
            "median_s": median,
            "speedup_vs_get_batch": {name: base / value for name, value in median.items()},
            "exact_identical_to_get_batch": same,
            "decord_backend_identical_to_get_batch": decord_same,
            "decord_backend_overhead_s": median["load_video_decord"] - base,
            "keyframe_indices_are_keyframes": on_keys,
            "keyframe_max_shift_s": max(abs(s) for s in keyframe.timestamp_shift),
            "first_call_s": first_call,
            "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        }
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
