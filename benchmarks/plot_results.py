"""Plot the recorded benchmark results: ours vs the reference, as speed ratios, one bar each.

Reads the JSON files the benchmark scripts wrote with `--json` into a folder (default
benchmarks/results/) and writes a PNG beside them.

    python benchmarks/plot_results.py benchmarks/results --out benchmarks/results/summary.png
"""

from __future__ import annotations

import argparse
import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# file stem -> function(result json) -> list of (label, ratio ours/ref, target or None)


def _tower(r):
    target = 1.5 if r["config"]["device"].startswith("cuda") else None  # the target is for bf16 on a GPU
    out = [(f"tower {r['config']['variant']} batch {r['config']['batch']} ({r['config']['device']}, "
            f"{r['config']['dtype']})", r["results"]["ours"]["speedup"], target)]
    labels = {"ours_compiled": "torch.compile", "ours_compiled_reduce-overhead": "compile, CUDA graphs",
              "ours_fp8": "FP8 matmuls", "ours_fp8_compiled": "FP8 + torch.compile"}
    for name, label in labels.items():
        if name in r["results"]:
            c = r["config"]
            out.append((f"tower {c['variant']} batch {c['batch']}, {label}", r["results"][name]["speedup"], target))
    return out


def _preprocess(r):
    return [(f"preprocess 32 frames 720p ({r['device']})", r["speedup"], 2.5)]


def _decode(r):
    s = r["speedup_vs_get_batch"]
    out = [("decode exact vs decord get_batch", s["load_video_exact"], 1.0),
           ("decode keyframe mode vs get_batch", s["load_video_keyframe"], 6.0)]
    if "load_video_decord" in s:
        out.append(("decode, decord backend vs get_batch", s["load_video_decord"], None))
    return out


def _video(r):
    out = [("video -> tokens, one 720p clip (tiny tower)", r["one_clip"]["speedup"], 1.5)]
    for name, res in r["folder"]["results"].items():
        if name != "reference":
            out.append((f"video -> tokens, folder, {name}", res["speedup"], None))
    return out


def _train(r):
    c = r["config"]
    return [(f"train step, raw video ({c['preset']}, {c['device']})", r["results"]["ours"]["speedup"], None),
            (f"train step, cached tokens ({c['preset']}, {c['device']})", r["results"]["ours_cached"]["speedup"],
             None)]


READERS = {"tower": _tower, "preprocess": _preprocess, "decode": _decode, "video": _video, "train": _train}


def collect(folder: pathlib.Path) -> list[tuple[str, float, float | None]]:
    bars = []
    for path in sorted(folder.glob("*.json")):
        kind = path.stem.split("_")[0]
        if kind not in READERS:
            print(f"skipping {path.name}: no reader for {kind!r}")
            continue
        bars += READERS[kind](json.loads(path.read_text()))
    return bars


def plot(bars: list[tuple[str, float, float | None]], out: pathlib.Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(bars) + 1.5))
    labels = [b[0] for b in bars][::-1]
    ratios = [b[1] for b in bars][::-1]
    colors = ["tab:green" if (t is None and r >= 1) or (t is not None and r >= t) else "tab:orange"
              for _, r, t in bars][::-1]
    ax.barh(labels, ratios, color=colors)
    for i, (_, r, t) in enumerate(bars[::-1]):
        ax.text(r, i, f" {r:.2f}x", va="center")
        if t is not None:
            ax.plot([t, t], [i - 0.4, i + 0.4], color="black", lw=2)
    ax.axvline(1.0, color="grey", ls="--", lw=1)
    ax.set_xlabel("speed vs the reference (x); black tick: target; green: target met")
    ax.set_title(title)
    ax.set_xlim(0, max(ratios + [t or 0 for *_, t in bars]) * 1.2)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", nargs="?", default="benchmarks/results", type=pathlib.Path)
    p.add_argument("--out", type=pathlib.Path, default=None)
    p.add_argument("--title", default="vlm-vision vs reference")
    args = p.parse_args()
    bars = collect(args.folder)
    if not bars:
        raise SystemExit(f"no benchmark results in {args.folder}")
    plot(bars, args.out or args.folder / "summary.png", args.title)


if __name__ == "__main__":
    main()
