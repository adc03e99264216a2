"""Size and load time of `vlm-vision report` pages of thousands of questions, in headless Chromium.

    python benchmarks/bench_report.py --questions 5000 --frames 8 32 --runs 3

Rows are synthetic multiple-choice predictions (6 categories, 3 duration buckets, 4 options, one in
three wrong); their thumbnails are real: strips of frames decoded from the bundled videos
(tests/data), a different run of consecutive frames per question, so that no two questions share a
strip (the worst case for size: a real eval of several questions per video shares them). The page
is built by the report's own functions (`report_rows`, `strip_jpeg`, `render_report`).

Measured per page: its bytes; in Chromium (Debian's, driven by Playwright), the time from navigation
to the first page of rows on screen (`window.reportReadyMs`, the page's own clock), to the `load`
event, the JS heap, and the time to apply a text filter and to turn to the next page. Medians over
`--runs` fresh browser pages. There is no reference tool to compare against (lmms-eval writes JSON
logs); the figures are absolute, on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import machine  # noqa: E402
from tests.vlm_vision.browser import browser_page  # noqa: E402
from video import load_video  # noqa: E402
from vlm_vision.evaluation.report import render_report, report_rows, strip_jpeg  # noqa: E402

CATEGORIES = ["action", "counting", "colour", "ordering", "ocr", "spatial"]
DURATIONS = [45.0, 400.0, 1800.0]
POOL = 64  # frames decoded per bundled video; each question takes a run of them


def _shrink(frames, height: int):
    """uint8[T, H, W, 3] frames resized to `height` pixels high, as strip_jpeg would (bilinear)."""
    import numpy as np
    import torch
    from PIL import Image

    t, h, w, _ = frames.shape
    width = max(1, round(height * w / h))
    small = [torch.from_numpy(np.array(
        Image.fromarray(f.numpy()).resize((width, height), Image.Resampling.BILINEAR))) for f in frames]
    return torch.stack(small)  # (T, height, width, 3)


def synthetic_page(questions: int, frames: int, height: int, quality: int, seed: int = 0) -> tuple[str, dict]:
    """The HTML of a report of `questions` rows with `frames`-frame strips, and facts about it."""
    rng = random.Random(seed)
    videos = sorted((ROOT / "tests" / "data").glob("*.mp4"))
    pools = [load_video(v, num_frames=POOL) for v in videos]
    thumbs = [_shrink(clip.frames, height) for clip in pools]  # resized once: strip_jpeg then only packs them
    rows, strips, urls = [], {}, []
    import base64

    for k in range(questions):
        clip = pools[k % len(pools)]
        picks = sorted(rng.sample(range(POOL), frames))
        jpeg, width = strip_jpeg(thumbs[k % len(pools)][picks], height, quality)  # (frames, h, w, 3)
        urls.append("data:image/jpeg;base64," + base64.b64encode(jpeg).decode())
        media, indices = f"/videos/{k}.mp4", [clip.indices[i] for i in picks]
        strips[(media, (), tuple(indices))] = (len(urls) - 1, width, None)
        answer = rng.randrange(4)
        ll = [round(-rng.uniform(0.1, 12.0), 4) for _ in range(4)]
        best = max(range(4), key=ll.__getitem__)
        gen = answer if rng.random() > 0.33 else (answer + 1) % 4
        rows.append({"id": f"q{k}", "source": "bench.jsonl", "category": CATEGORIES[k % 6],
                     "duration": DURATIONS[k % 3], "media": media,
                     "frames": {"indices": indices, "times": [round(clip.presentation_times[i], 4) for i in picks]},
                     "tokens": {"text": 60 + k % 40, "visual": frames * 144}, "type": "multiple_choice",
                     "question": f"Question {k}: what happens after the person picks up the object?",
                     "options": ["they put it down", "they drink from it", "they hand it over", "nothing"],
                     "answer": "ABCD"[answer],
                     "prediction": {"generated": "ABCD"[gen], "generated_choice": "ABCD"[gen],
                                    "log_likelihood_choice": "ABCD"[best]},
                     "correct": {"generated": gen == answer, "log_likelihood": best == answer},
                     "scores": {"log_likelihood": ll}})
    data = {"title": f"benchmark: {questions} questions, {frames} frames", "rows": report_rows(rows, strips),
            "strips": urls, "pageSize": 50, "thumbHeight": height, "made": time.strftime("%Y-%m-%d %H:%M:%S"),
            "models": [{"name": "synthetic", "dir": "-", "metrics": {}}], "seconds": 0}
    page = render_report(data)
    thumbs = sum(len(u) for u in urls)
    return page, {"questions": questions, "frames": frames, "thumb_height": height, "jpeg_quality": quality,
                  "page_mb": round(len(page.encode()) / 1e6, 2), "thumbnails_mb": round(thumbs / 1e6, 2),
                  "bytes_per_question": round(len(page.encode()) / questions)}


def load_times(path: Path, runs: int) -> dict:
    """Medians over `runs` fresh pages: ready (first rows on screen), load event, filter, next page, JS heap."""
    out: dict[str, list[float]] = {"ready_ms": [], "load_event_ms": [], "filter_ms": [], "next_page_ms": [],
                                   "js_heap_mb": []}
    for _ in range(runs):
        with browser_page() as (page, errors):
            page.goto(path.as_uri(), timeout=120000)
            page.wait_for_selector("body[data-ready='1']", timeout=120000)
            out["ready_ms"].append(page.evaluate("window.reportReadyMs"))
            out["load_event_ms"].append(page.evaluate(
                "performance.getEntriesByType('navigation')[0].loadEventEnd"))
            out["filter_ms"].append(page.evaluate("""() => { const t = performance.now();
                const box = document.getElementById('f-text'); box.value = 'question 4';
                box.dispatchEvent(new Event('input')); return performance.now() - t; }"""))
            page.evaluate("""() => { const box = document.getElementById('f-text'); box.value = '';
                box.dispatchEvent(new Event('input')); }""")
            out["next_page_ms"].append(page.evaluate("""() => { const t = performance.now();
                document.getElementById('next').click(); return performance.now() - t; }"""))
            out["js_heap_mb"].append(page.evaluate("performance.memory ? performance.memory.usedJSHeapSize / 1e6 : -1"))
            assert page.locator("article.q").count() == 50, "a page of 50 rows"
            assert errors == [], errors
    return {k: round(statistics.median(v), 1) for k, v in out.items()} | {"runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=5000)
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--thumb-height", type=int, default=48)
    parser.add_argument("--jpeg-quality", type=int, default=70)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "report_cpu.json"))
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for frames in args.frames:
            started = time.perf_counter()
            page, facts = synthetic_page(args.questions, frames, args.thumb_height, args.jpeg_quality)
            facts["build_s"] = round(time.perf_counter() - started, 1)
            path = Path(tmp) / f"report_{frames}.html"
            path.write_text(page, encoding="utf-8")
            facts.update(load_times(path, args.runs))
            print(json.dumps(facts))
            results.append(facts)
    Path(args.output).write_text(json.dumps({"machine": machine(), "results": results}, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
