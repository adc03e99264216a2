"""Training data at LLaVA-Video-178K's scale: the memory-mapped record store and the scan, beside today's code.

Writes synthetic records shaped like LLaVA-Video-178K (a caption of 60-220 words, then 1-3 short
question/answer turns; 85% video, 10% image, 5% text), then runs each phase in its own process:

- build: the store (`vlm_vision.data.store`), its time and the process's peak memory;
- scan: the first scan (cache miss) over `--workers` forked processes, and the same with 1 process;
- floor: the chat template rendered plus batch tokenization of the same conversations (1 process);
- start: a cached start (store and scan read from the cache);
- step: the main process's anonymous memory per record at the first batch of a DataLoader with
  `--loader-workers` workers (steady state: everything a run holds before its first step);
- epoch: each DataLoader worker's growth over a full epoch of indexing the records (parsed, no
  media decoding): anonymous and Private_Dirty memory from /proc/PID/smaps_rollup (clean pages of
  the mapped store are not growth).

`--baseline DIR` runs today's implementation (a checkout of an older commit, e.g. made with
`git worktree add /tmp/base23 02dbd4e`) on `--baseline-records` records the same way; its
figures are scaled per record.

    nice python benchmarks/bench_data_scale.py --records 1300000 --baseline /tmp/base23 \\
        --baseline-records 300000 --rate-records 50000 --repeat 3 --json benchmarks/results/data_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("the a man woman child dog car street kitchen table red blue green walks runs holds opens looks "
         "slowly quickly camera scene light window door moves turns picks up puts down room outside inside "
         "bright dark small large wooden metal background foreground left right near far person people").split()
QUESTIONS = ("What is the person holding?", "Where does the scene take place?", "What colour is the car?",
             "How many people appear?", "What happens at the end?", "Which object is on the table?")
OPTIONS = "\nA. a cup\nB. a phone\nC. a book\nD. a bag\nAnswer with the option's letter from the given choices."


def synthetic_record(i: int, rng: random.Random) -> dict:
    """A LLaVA-Video-178K-shaped record: caption of 60-220 words, then 1-3 short QA turns."""
    caption = " ".join(rng.choice(WORDS) for _ in range(rng.randint(60, 220))).capitalize() + "."
    kind = rng.random()
    medium = "video" if kind < 0.85 else "image" if kind < 0.95 else None
    what = medium or "text"
    turns = [("human", (f"<image>\n" if medium else "") + f"Describe this {what} in detail."), ("gpt", caption)]
    for _ in range(rng.randint(1, 3)):
        question = rng.choice(QUESTIONS)
        if rng.random() < 0.5:
            turns += [("human", question + OPTIONS), ("gpt", rng.choice("ABCD") + ".")]
        else:
            turns += [("human", question), ("gpt", " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))))]
    record = {"id": f"rec_{i}", "conversations": [{"from": f, "value": v} for f, v in turns]}
    if medium == "video":
        record["video"] = f"videos/clip_{i % 50}.mp4"
    elif medium == "image":
        record["image"] = f"images/img_{i % 20}.jpg"
    return record


def write_dataset(root: Path, n: int) -> Path:
    """`root/train.json` with n records, and the (empty) media files they name."""
    for sub, names in (("videos", [f"clip_{k}.mp4" for k in range(50)]), ("images", [f"img_{k}.jpg" for k in range(20)])):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for name in names:
            (root / sub / name).write_bytes(b"\0")  # the scan checks that media exist; it never decodes them
    path = root / "train.json"
    rng = random.Random(0)
    with path.open("w") as f:
        f.write("[")
        for i in range(n):
            f.write(("," if i else "") + json.dumps(synthetic_record(i, rng)))
        f.write("]")
    return path


# ----- inside one phase process -------------------------------------------------------------------


def _tokenizer_and_visual():
    from tokenizers import AddedToken

    from tests.vlm_vision.train_fixtures import make_tokenizer
    from vlm_vision.data.record_tokens import VisualSpec

    tok = make_tokenizer()  # byte-level BPE with a ChatML template, as the training tests use
    tok.add_tokens([AddedToken("<video>", special=True), AddedToken("<image>", special=True)], special_tokens=True)
    visual = VisualSpec(token_ids={"video": tok.convert_tokens_to_ids("<video>"),
                                   "image": tok.convert_tokens_to_ids("<image>")},
                        video_tokens=_video_tokens, image_tokens=576, tokens_per_frame=144, num_frames=32)
    return tok, visual


def _video_tokens(frames: int) -> int:
    return frames * 144


def _mem(pid: str = "self") -> dict[str, int]:
    """Anonymous, Private_Dirty and Rss (bytes) from smaps_rollup."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Anonymous", "Private_Dirty", "Rss", "Shared_Clean", "Private_Clean"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def _peak() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _training_data(args, tok, visual):
    from vlm_vision.data.formats import MediaRoots
    from vlm_vision.data.scan import load_training_data

    return load_training_data(args.data, MediaRoots(), tok, visual, args.max_length, cache_dir=args.cache,
                              workers=args.workers)


class _Index:
    """A dataset that parses records when indexed (no media decoding): what a worker does with the store."""

    def __init__(self, records):
        self.records = records

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return len(self.records[i].messages)


def _count(batch):
    return len(batch)


def phase(args) -> dict:
    """Run one phase in this process; returns its figures."""
    import gc
    import resource

    def cpu() -> float:  # user + system seconds of this process and its reaped children (load-independent)
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    tok, visual = _tokenizer_and_visual()
    import torch.utils.data  # noqa: F401  (fixed costs, not per record: imported before the baseline)

    if args.impl == "new":
        import datasets  # noqa: F401
    gc.collect()
    base = _mem()
    t = time.perf_counter()
    if args.phase == "build":
        from vlm_vision.data.store import open_store

        store = open_store(args.data, args.cache)
        return {"s": time.perf_counter() - t, "peak_bytes": _peak(), "records": len(store)}
    if args.phase in ("scan", "start"):
        if args.impl == "new":
            from vlm_vision.data.scan import open_rows

            rows = open_rows(args.data, cache_dir=args.cache)
        else:
            from vlm_vision.data.files import load_rows

            rows = load_rows(args.data)
        read = time.perf_counter() - t
        from vlm_vision.data.formats import MediaRoots
        from vlm_vision.data.scan import cached_scan

        c0, t1 = cpu(), time.perf_counter()
        result, hit = cached_scan(rows, MediaRoots(), tok, visual, args.max_length, cache_dir=args.cache,
                                  workers=args.workers)
        assert hit == (args.phase == "start"), "the cache did not behave as the phase expects"
        return {"read_s": read, "scan_s": time.perf_counter() - t1, "cpu_s": cpu() - c0, "records": len(rows),
                "skipped": len(result.skipped), "lengths_sum": int(result.lengths.sum()), "peak_bytes": _peak()}
    if args.phase == "floor":
        from vlm_vision.data.formats import ROLES

        if args.impl == "new":
            from vlm_vision.data.scan import open_rows

            rows = open_rows(args.data, cache_dir=args.cache)
        else:
            from vlm_vision.data.files import load_rows

            rows = load_rows(args.data)
        convs = [[{"role": ROLES[turn["from"]], "content": turn["value"]} for turn in rows.raw(k)["conversations"]]
                 for k in range(len(rows))]
        t, c0 = time.perf_counter(), cpu()
        for start in range(0, len(convs), 512):
            texts = [tok.apply_chat_template(c, tokenize=False) for c in convs[start:start + 512]]
            tok(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        return {"s": time.perf_counter() - t, "cpu_s": cpu() - c0, "records": len(convs)}
    import torch

    if args.phase == "store":  # the store alone at full scale: every record indexed, no scan
        import numpy as np

        from vlm_vision.data.formats import MediaRoots
        from vlm_vision.data.scan import LazyRecords, open_rows

        rows = open_rows(args.data, cache_dir=args.cache)
        records = LazyRecords(rows, np.arange(len(rows)), MediaRoots())
        return _epoch(args, records, base)
    data = _training_data(args, tok, visual)
    from vlm_vision.data.examples import ConversationDataset

    dataset = ConversationDataset(data.records, tok, visual, max_length=args.max_length, load_video=None,
                                  load_cached=None, transform=None)
    return _epoch(args, dataset.records, base)


def _epoch(args, records, base) -> dict:
    """Main memory at the first batch of a DataLoader that indexes `records`; with phase 'epoch' or
    'store', each worker's growth over the full epoch."""
    import gc

    import torch

    loader = torch.utils.data.DataLoader(_Index(records), batch_size=256, num_workers=args.loader_workers,
                                         shuffle=True, collate_fn=_count, persistent_workers=True)
    it = iter(loader)
    next(it)
    gc.collect()
    main = _mem()
    out = {"records": len(records), "main_anon_bytes": main["Anonymous"] - base["Anonymous"],
           "main_anon_per_record": (main["Anonymous"] - base["Anonymous"]) / len(records)}
    if args.phase == "step":
        return out
    pids = [str(w.pid) for w in it._workers]
    before = [_mem(p) for p in pids]
    seen = 256 + sum(next_batch for next_batch in it)
    after = [_mem(p) for p in pids]
    out.update(indexed=seen, workers=[{"anon_growth": a["Anonymous"] - b["Anonymous"],
                                       "private_dirty_growth": a["Private_Dirty"] - b["Private_Dirty"],
                                       "shared_clean_end": a["Shared_Clean"], "private_clean_end": a["Private_Clean"]}
                                      for a, b in zip(after, before)])
    return out


# ----- the driver ---------------------------------------------------------------------------------


def run_phase(name: str, impl: str, data: Path, cache: Path, *, workers: int, loader_workers: int,
              max_length: int, baseline: str | None) -> dict:
    """One phase in a fresh, niced process (today's code from `baseline` when impl is 'old')."""
    # One thread per process, so that "2 processes" is 2 cores (the tokenizer would use every core otherwise).
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(baseline if impl == "old" else ROOT),
               TOKENIZERS_PARALLELISM="false", RAYON_NUM_THREADS="1", OMP_NUM_THREADS="1")
    cmd = ["nice", "-n", os.environ.get("BENCH_NICE", "10"), sys.executable, __file__, "--phase", name, "--impl", impl, "--data", str(data),
           "--cache", str(cache), "--workers", str(workers), "--loader-workers", str(loader_workers),
           "--max-length", str(max_length)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"phase {name} ({impl}) failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {impl:>3} {name:<6} {json.dumps(result)[:300]}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=1_300_000)
    parser.add_argument("--baseline", help="a checkout of today's code (git worktree add DIR COMMIT)")
    parser.add_argument("--baseline-records", type=int, default=300_000)
    parser.add_argument("--rate-records", type=int, default=50_000,
                        help="records of the scan-rate comparison (0: none)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--store-records", type=int, default=0,
                        help="also build a store of this many records and index all of them (no scan)")
    parser.add_argument("--workers", type=int, default=2, help="scan processes")
    parser.add_argument("--loader-workers", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=8192)
    parser.add_argument("--json")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--impl", default="new", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        sys.path.insert(0, os.environ["PYTHONPATH"])
        print(json.dumps(phase(args)))
        return
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _common import machine, write_json

    report: dict = {"machine": machine(), "records": args.records, "baseline_records": args.baseline_records,
                    "rate_records": args.rate_records, "workers": args.workers, "loader_workers": args.loader_workers}
    common = {"loader_workers": args.loader_workers, "max_length": args.max_length, "baseline": args.baseline}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        root = Path(tmp)
        # scan rates: both implementations and the floor on the same records, 1 process, repeated
        rates: dict[str, list[float]] = {"new_1": [], "new_2": [], "floor": [], "old_1": []}
        cpu_rates: dict[str, list[float]] = {}
        rate_data = write_dataset(root / "rate", args.rate_records) if args.rate_records else None
        for r in range(args.repeat if args.rate_records else 0):
            print(f"rates, repeat {r + 1}", flush=True)
            runs = [("new_1", "new", 1), ("old_1", "old", 1), ("new_2", "new", 2)]
            for key, impl, workers in runs[r % 3:] + runs[:r % 3]:  # rotated: load drift hits each in turn
                if impl == "old" and not args.baseline:
                    continue
                cache = root / f"rate-cache-{key}-{r}"
                if impl == "new":
                    run_phase("build", impl, rate_data, cache, workers=workers, **common)
                res = run_phase("scan", impl, rate_data, cache, workers=workers, **common)
                rates[key].append(args.rate_records / res["scan_s"])
                cpu_rates.setdefault(key, []).append(args.rate_records / res["cpu_s"])
                report.setdefault("rate_lengths_sum", {})[key] = res["lengths_sum"]
            res = run_phase("floor", "new", rate_data, root / "rate-cache-new_1-0", workers=1, **common)
            rates["floor"].append(args.rate_records / res["s"])
            cpu_rates.setdefault("floor", []).append(args.rate_records / res["cpu_s"])
        report["rates_per_s"] = {k: v for k, v in rates.items() if v}
        report["rate_medians"] = {k: statistics.median(v) for k, v in rates.items() if v}
        report["cpu_rates_per_s"] = cpu_rates  # records per CPU-second (all processes of a scan together)
        report["cpu_rate_medians"] = {k: statistics.median(v) for k, v in cpu_rates.items()}
        # at scale
        for impl, n in (("new", args.records), ("old", args.baseline_records)):
            if not n or (impl == "old" and not args.baseline):
                continue
            print(f"{impl}: {n:,} records", flush=True)
            data = write_dataset(root / impl, n)
            cache = root / f"{impl}-cache"
            res = {"file_bytes": data.stat().st_size}
            if impl == "new":
                res["build"] = run_phase("build", impl, data, cache, workers=args.workers, **common)
            res["first"] = run_phase("scan", impl, data, cache, workers=args.workers, **common)
            res["start"] = [run_phase("start", impl, data, cache, workers=args.workers, **common)
                            for _ in range(args.repeat)]
            res["step"] = [run_phase("step", impl, data, cache, workers=args.workers, **common)
                           for _ in range(args.repeat)]
            res["epoch"] = run_phase("epoch", impl, data, cache, workers=args.workers, **common)
            report[impl] = res
            (root / impl / "train.json").unlink()
        if args.store_records:
            print(f"store only: {args.store_records:,} records", flush=True)
            data = write_dataset(root / "store", args.store_records)
            cache = root / "store-cache"
            report["store_only"] = {"records": args.store_records, "file_bytes": data.stat().st_size,
                                    "build": run_phase("build", "new", data, cache, workers=1, **common),
                                    "epoch": run_phase("store", "new", data, cache, workers=1, **common)}
    write_json(args.json, report)
    print(json.dumps(report.get("rate_medians", {})))


if __name__ == "__main__":
    main()
