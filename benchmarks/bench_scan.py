"""The training-data scan at a million records: first scan (cache miss) and a resumed start (cache hit).

Writes a synthetic JSON file in LLaVA-Video-178K's shapes (videos with `<image>`, multiple-choice
and open-ended questions, captions), mixed with images and text-only records, then times what a
training start does before its first step: read the file, fingerprint it, and either scan every
record (render the chat template, tokenize, count visual tokens, check lengths; split over
`--workers` forked processes) or read the cached scan. Also reports the padding fraction of
micro-batches in plain and length-grouped order on the scanned lengths.

    python benchmarks/bench_scan.py                       # 1M records
    python benchmarks/bench_scan.py --records 100000 --workers 2 --json benchmarks/results/scan_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _common import machine, print_table, write_json  # noqa: E402

QUESTIONS = ["What is the person doing in the video?", "Describe the scene in detail.",
             "How many people appear in this clip?", "What happens after the door opens?"]
OPTIONS = "\nA. cooking\nB. running\nC. reading a book\nD. painting a wall\nAnswer with the option's letter."


def synthetic_record(i: int) -> dict:
    """Record i: 40% video (half multiple-choice, some with a caption), 30% image, 30% text-only."""
    shape = i % 10
    question = QUESTIONS[i % len(QUESTIONS)]
    if shape < 4:
        if shape % 2:
            turns = [("human", f"<image>\n{question}{OPTIONS}"), ("gpt", "C.")]
        else:
            turns = [("human", f"<image>\n{question}"), ("gpt", "A person walks in and sits at a desk. " * (1 + i % 5))]
        if shape == 0:
            turns += [("human", "Please caption the video."), ("gpt", "A quiet room, a desk, a lamp. " * 8)]
        media = {"video": f"videos/clip_{i % 7}.mp4"}
    elif shape < 7:
        turns = [("human", f"<image>\n{question.replace('video', 'image')}"), ("gpt", "A cat on a chair. " * (1 + i % 3))]
        media = {"image": f"images/img_{i % 5}.jpg"}
    else:
        turns = [("human", "Explain the rule of thirds. " * (1 + i % 4)), ("gpt", "Place the subject on a third. " * 6)]
        media = {}
    return {"id": f"rec_{i}", **media, "conversations": [{"from": f, "value": v} for f, v in turns]}


def write_dataset(root: Path, n: int) -> Path:
    for sub, names in (("videos", [f"clip_{k}.mp4" for k in range(7)]), ("images", [f"img_{k}.jpg" for k in range(5)])):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for name in names:
            (root / sub / name).write_bytes(b"\0")  # the scan checks that media exist; it never decodes them
    path = root / "train.json"
    with path.open("w") as f:
        f.write("[")
        for i in range(n):
            f.write(("," if i else "") + json.dumps(synthetic_record(i)))
        f.write("]")
    return path


def start(path: Path, tok, visual, cache: Path, workers: int, max_length: int):
    """What a training start does with the data: read, fingerprint, scan or read the cached scan."""
    from vlm_vision.data.files import load_rows
    from vlm_vision.data.formats import MediaRoots
    from vlm_vision.data.scan import cached_scan

    t0 = time.perf_counter()
    rows = load_rows(path)
    t1 = time.perf_counter()
    result, hit = cached_scan(rows, MediaRoots(), tok, visual, max_length, cache_dir=cache, workers=workers)
    return result, hit, t1 - t0, time.perf_counter() - t1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-length", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    from tokenizers import AddedToken

    from tests.vlm_vision.train_fixtures import make_tokenizer
    from vlm_vision.training.order import DataOrder, padding_fraction
    from vlm_vision.data.record_tokens import VisualSpec

    tok = make_tokenizer()  # byte-level BPE with a ChatML template, as the training tests use
    tok.add_tokens([AddedToken("<video>", special=True), AddedToken("<image>", special=True)], special_tokens=True)
    visual = VisualSpec(token_ids={"video": tok.convert_tokens_to_ids("<video>"),
                                   "image": tok.convert_tokens_to_ids("<image>")},
                        video_tokens=lambda t: t * 144, image_tokens=576, tokens_per_frame=144, num_frames=32)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        path = write_dataset(root, args.records)
        print(f"wrote {args.records:,} records ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.0f} s")
        first, hit1, read1, scan1 = start(path, tok, visual, root / "cache", args.workers, args.max_length)
        again, hit2, read2, scan2 = start(path, tok, visual, root / "cache", args.workers, args.max_length)
    assert not hit1 and hit2 and (first.lengths == again.lengths).all()
    kept = first.kept
    lengths, kinds = first.lengths[kept].tolist(), first.kinds[kept].tolist()
    steps = min(len(kept) // args.batch_size, 20_000)
    pads = {}
    for name, order in (("plain", DataOrder(len(kept), batch_size=args.batch_size, num_processes=1, seed=0)),
                        ("grouped", DataOrder(len(kept), batch_size=args.batch_size, num_processes=1, seed=0,
                                              lengths=lengths, modalities=kinds))):
        pads[name] = padding_fraction(lengths, [order.micro_batch(p, 0) for p in range(steps)])
    per_million = 1e6 / args.records
    rows = [("start", "read + fingerprint s", "scan s", "s per 1M records"),
            ("first (cache miss)", f"{read1:.1f}", f"{scan1:.1f}", f"{(read1 + scan1) * per_million:.0f}"),
            ("resumed (cache hit)", f"{read2:.1f}", f"{scan2:.2f}", f"{(read2 + scan2) * per_million:.1f}")]
    print_table(f"scan of {args.records:,} records, {args.workers} worker(s), {len(first.skipped)} skipped", rows)
    print(f"\npadding in micro-batches of {args.batch_size}: plain order {pads['plain']:.1%}, "
          f"grouped by modality and length {pads['grouped']:.1%}")
    write_json(args.json, {"machine": machine(), "records": args.records, "workers": args.workers,
                           "first": {"read_s": read1, "scan_s": scan1}, "cached": {"read_s": read2, "scan_s": scan2},
                           "padding_fraction": pads, "batch_size": args.batch_size})


if __name__ == "__main__":
    main()
