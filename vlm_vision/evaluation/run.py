"""`vlm-vision eval`: answer a file of video questions with a model, resumably, and report accuracy.

    vlm-vision eval --model runs/stage2/final --data questions.jsonl --media-root media/ --output-dir evals/s2

The output folder:

    predictions.jsonl          one line per question, written as each batch finishes: id, source file,
                               prediction, correct, scores (or `error`: why its medium was unreadable), and
                               what the model saw: `media` (the file), `frames` (each frame's `indices`
                               and presentation `times`) and `tokens` (the prompt's `text` and `visual` counts)
    run.json                   the model's identity and the settings the predictions were made with
    metrics.json               overall, per category and per video-duration bucket; counts of bad
                               records and unreadable media with their reasons; settings; the model
    accuracy_by_category.png   the per-category accuracies as bars
    report.html                with `--report`: every question with its frames, answers and scores
                               (`vlm_vision.evaluation.report`; `vlm-vision report` makes it later)

Why a rerun resumes safely: questions already in `predictions.jsonl` (keyed by source file and
id) are skipped. A run killed mid-write leaves at most a last line without its newline; it is cut
off and that question is asked again. Predictions are only ever mixed with ones of the same model
(its fingerprint) and settings: otherwise the run stops and says what differs.

Bad records (a missing field, an answer that is not among the options, missing media) are
counted and listed with their reason in `metrics.json`, and so are media that fail to decode;
none stops the run, and none counts towards the accuracy.

Several processes (`accelerate launch` or `torchrun`, one per GPU; gloo on CPUs): each loads the
model on its own device and answers every Nth open question into its own
`predictions.part-RANK.jsonl`; at the end the first process appends the parts to
`predictions.jsonl` (a rerun does the same with parts a killed run left) and writes the metrics.
The answers are those of one process: each question is answered alone or in a batch, and the
batch's padding never changes an answer.
"""

from __future__ import annotations

import dataclasses
import json
import io
import logging
import os
import time
from pathlib import Path
from typing import Any

from video.atomic_files import write_atomic
from video.frame_scale import scale_label
from vlm_vision.errors import InputError
from vlm_vision.evaluation.questions import summarize

__all__ = ["EvalConfig", "run_eval", "read_predictions"]

logger = logging.getLogger("vlm_vision.eval")

PREDICTIONS = "predictions.jsonl"
RUN_FILE = "run.json"
METRICS = "metrics.json"
CHART = "accuracy_by_category.png"


@dataclasses.dataclass
class EvalConfig:
    """One evaluation; `vlm-vision eval` takes each field as a flag (`--batch-size` for `batch_size`)."""

    model: str
    """A training run's final/ or checkpoint-STEP/, a merged model, or a transformers LLaVA-NeXT-Video folder."""
    data: tuple[str, ...]
    """Question records, .json (a list) or .jsonl; several files may be given."""
    output_dir: str
    """predictions.jsonl, run.json, metrics.json and accuracy_by_category.png go here."""
    media_root: str | None = None
    """Folder media paths are relative to (default: each data file's folder)."""
    batch_size: int = 8
    """Questions per batch (and option sequences per forward pass when scoring)."""
    num_frames: int | None = None
    """Frames sampled from each video (default: the model's training setting, else 32)."""
    fps: float | None = None
    """Sample about this many frames per second of video (default: the model's training setting)."""
    min_frames: int | None = None
    """With `fps`, the fewest frames per video (default: the model's training setting)."""
    max_frames: int | None = None
    """With `fps`, the most frames per video (default: the model's training setting)."""
    max_video_tokens: int | None = None
    """Token budget of one video; longer videos pool harder (default: the model's training setting)."""
    full_resolution_frames: bool = False
    """Send video frames from the decoder process at their own resolution and resize them afterwards, as
    earlier versions did (default: the decoder process resizes them for the tower; see docs/video.md)."""
    limit: int | None = None
    """Evaluate only the first N records."""
    max_new_tokens: int = 32
    """Longest generated answer, in tokens."""
    device: str | None = None
    """Where the model runs (default: cuda when available, else cpu)."""
    dtype: str = dataclasses.field(default="auto", metadata={"choices": ("auto", "float32", "bfloat16", "float16")})
    """float32, bfloat16 or float16; auto: bfloat16 on a GPU, float32 on the CPU."""
    num_workers: int = 2
    """Processes decoding media ahead of the model (0: decode in the main process)."""
    progress: bool = True
    """Show a progress bar (questions per second)."""
    report: bool = False
    """Also write report.html: every question with the frames the model saw (see `vlm-vision report`)."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_new_tokens", "num_frames", "limit", "min_frames", "max_frames",
                     "max_video_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if isinstance(self.data, str):
            self.data = (self.data,)
        self.data = tuple(self.data)


# ----- inputs -------------------------------------------------------------------------------------


def read_predictions(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a predictions file; a last line without its newline is cut off the file.

    Raises:
        ValueError: when a complete line is not JSON (the file was edited or is not ours).
    """
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    rows = []
    for n, line in enumerate(data[:end].splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise InputError(f"line {n} is not JSON ({e.msg})", path, "predictions written by vlm-vision eval; "
                                 "it was not written by vlm-vision eval, or was edited; remove the line or choose "
                                 "another output folder") from None
    if end < len(data):
        logger.warning("%s: dropping an unfinished last line (%d bytes) left by an interrupted run",
                       path, len(data) - end)
        with path.open("r+b") as f:
            f.truncate(end)
    return rows


def _check_run(out: Path, run: dict[str, Any]) -> None:
    """Refuse to add to predictions made with another model or settings than `run.json` records."""
    before = json.loads((out / RUN_FILE).read_text())
    changed = {k: (before[k], run[k]) for k in ("model", "settings") if before.get(k) != run[k]}
    if changed:
        raise InputError("holds predictions made with another model or settings", f"--output-dir {out}",
                         f"another model or settings (then, now): {changed}; choose another --output-dir, or "
                         f"delete {out / PREDICTIONS} to start again")


def _part(out: Path, rank: int) -> Path:
    """Where process `rank` of a multi-process run writes its predictions."""
    return out / f"predictions.part-{rank}.jsonl"


def merge_parts(out: Path) -> int:
    """Append the part files of a multi-process run to `predictions.jsonl` and remove them; the rows moved.

    A part's unfinished last line (a killed process) is dropped, and that question is asked again.
    """
    moved = 0
    for part in sorted(out.glob("predictions.part-*.jsonl")):
        rows = read_predictions(part)
        with (out / PREDICTIONS).open("a", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
            f.flush()
            os.fsync(f.fileno())  # the rows are safe before their part goes
        part.unlink()
        moved += len(rows)
    return moved


def _write_json(path: Path, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode())


# ----- the run ------------------------------------------------------------------------------------


def _dtype(config: EvalConfig, device: Any) -> Any:
    """The dtype the model runs in: the config's, else bfloat16 on a GPU and float32 on the CPU."""
    import torch  # lazy: `vlm-vision eval --help` and `import vlm_vision` do not load torch

    name = config.dtype if config.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    return getattr(torch, name)


def run_eval(config: EvalConfig) -> dict[str, Any]:
    """Evaluate `config.model` on `config.data`; writes the output folder and returns the metrics.

    Raises:
        ValueError: for a model folder we cannot read, a data file that is not JSON, or an output
            folder whose predictions were made with another model or settings.
    """
    from tqdm.auto import tqdm  # lazy: kept off `vlm-vision eval --help`

    from vlm_vision.evaluation.model import load_eval_model, model_identity  # lazy: torch and transformers, for a run only
    from vlm_vision.evaluation.answers import answer_questions, read_questions  # lazy: as eval_model
    from vlm_vision.evaluation.processes import barrier, resolve_device  # lazy: torch, for a run only

    out = Path(config.output_dir)
    device, rank, processes = resolve_device(config.device)
    store = out / "data-scan"  # question files go through the memory-mapped store, built by the first process
    if rank:
        barrier(processes)
    questions, bad, records = read_questions(config.data, config.media_root, config.limit, cache_dir=store)
    if not rank:
        barrier(processes)
    identity = model_identity(config.model)
    dtype = _dtype(config, device)
    model, processor = load_eval_model(config.model, device=device, dtype=dtype)
    processor = _with_sampling(model, processor, config)
    processor.full_resolution_frames = config.full_resolution_frames  # the decoder's resize (video.frame_scale)
    num_frames = config.num_frames or processor.num_frames
    sampling = processor.video_sampling(num_frames)
    settings = {"num_frames": num_frames, "max_new_tokens": config.max_new_tokens,
                "dtype": str(dtype).removeprefix("torch.")}
    if sampling.get("fps") is not None or model.max_video_tokens is not None:
        settings.update({**sampling, "max_video_tokens": model.max_video_tokens})
    settings["frame_scale"] = scale_label(sampling.get("frame_scale"))
    run = {"model": identity, "settings": settings}
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if not (out / RUN_FILE).is_file():
            _write_json(out / RUN_FILE, run)
        merge_parts(out)  # a killed multi-process run's answers; repairs the files for the readers below
    barrier(processes)
    _check_run(out, run)  # every process, so that all stop together

    predictions = out / PREDICTIONS
    done = {(r["source"], r["id"]): r for r in read_predictions(predictions)}
    todo = [q for q in questions if (q.source, q.id) not in done]
    mine = todo[rank::processes]
    bar = tqdm(total=len(questions), initial=len(questions) - len(todo), unit="q", desc="eval",
               disable=not config.progress or rank != 0)
    started = time.perf_counter()
    with (predictions if processes == 1 else _part(out, rank)).open("a", encoding="utf-8") as f:
        def write(rows: list[dict[str, Any]]) -> None:
            for row in rows:
                f.write(json.dumps(row) + "\n")  # one write per line: a kill leaves at most a partial last line
                done[(row["source"], row["id"])] = row
            f.flush()
            bar.update(min(len(rows) * processes, bar.total - bar.n))  # the others answer about as many meanwhile

        answer_questions(model, processor, mine, num_frames=num_frames, batch_size=config.batch_size,
                         max_new_tokens=config.max_new_tokens, num_workers=config.num_workers, on_rows=write,
                         sampling=sampling)
    bar.close()
    barrier(processes)
    seconds = time.perf_counter() - started
    if rank != 0:
        barrier(processes)  # the first process merges and writes the metrics
        return json.loads((out / METRICS).read_text())
    if processes > 1:
        merge_parts(out)
        done = {(r["source"], r["id"]): r for r in read_predictions(predictions)}
    rows = [done[(q.source, q.id)] for q in questions]
    metrics = _metrics(rows, bad, records, len(questions) - len(todo), identity, config, settings)
    metrics["timing"] = {"seconds": round(seconds, 2),
                         "questions_per_s": round(len(todo) / seconds, 3) if todo and seconds > 0 else None}
    metrics["processes"] = processes
    _write_json(out / METRICS, metrics)
    plot_categories(metrics["per_category"], out / CHART)
    _print_summary(metrics, out)
    if config.report:
        from vlm_vision.evaluation.report import ReportConfig, write_report  # lazy: decodes thumbnails, for --report only

        print(f"report: {write_report(ReportConfig(eval_dir=str(out), progress=config.progress))}")
    barrier(processes)
    return metrics


def _with_sampling(model: Any, processor: Any, config: EvalConfig) -> Any:
    """The processor with `config`'s frame sampling and token budget where given (the model's own otherwise)."""
    overrides = {k: getattr(config, k) for k in ("fps", "min_frames", "max_frames") if getattr(config, k) is not None}
    if not overrides and config.max_video_tokens is None:
        return processor
    if config.max_video_tokens is not None:
        model.max_video_tokens = config.max_video_tokens  # the stride follows from the frame count
    from vlm_vision.model.processor import VisionLanguageProcessor  # lazy: loads transformers (see `run_eval`)

    kept = {"fps": processor.fps, "min_frames": processor.min_frames, "max_frames": processor.max_frames}
    if "fps" not in overrides and processor.fps is None:  # uniform sampling has no max_frames
        kept["max_frames"] = None
    return VisionLanguageProcessor.for_model(
        processor.tokenizer, model, num_frames=processor.num_frames, padding_side=processor.padding_side,
        time_instruction=processor.time_instruction, time_markers=processor.time_markers, **(kept | overrides))


def _metrics(rows: list[dict[str, Any]], bad: list[dict[str, str]], records: int, resumed: int,
             identity: dict[str, Any], config: EvalConfig, settings: dict[str, Any]) -> dict[str, Any]:
    summary = summarize(rows)
    failed = summary.pop("undecodable")
    counts = {"records": records, "evaluated": len(rows) - len(failed), "bad_records": len(bad),
              "undecodable": len(failed), "resumed": resumed}
    metrics = {"model": identity, "data": [str(Path(p).resolve()) for p in config.data],
               "settings": {**settings, "batch_size": config.batch_size, "limit": config.limit}, "counts": counts,
               **summary, "bad_records": bad, "undecodable": failed}
    if records and counts["evaluated"] < records / 2:
        metrics["warning"] = (f"only {counts['evaluated']} of {records} records were evaluated "
                              f"({len(bad)} bad, {len(failed)} unreadable media); see bad_records and undecodable")
        logger.warning(metrics["warning"])
    return metrics


def _print_summary(metrics: dict[str, Any], out: Path) -> None:
    overall, counts = metrics["overall"], metrics["counts"]
    parts = [f"{counts['evaluated']} questions"]
    if "multiple_choice" in overall:
        mc = overall["multiple_choice"]
        parts.append(f"multiple choice: generated letter {mc['generated_accuracy']:.3f}, "
                     f"log-likelihood {mc['log_likelihood_accuracy']:.3f} (chance {mc['chance']:.3f})")
    if "open_ended" in overall:
        oe = overall["open_ended"]
        parts.append(f"open-ended: exact match {oe['exact_match']:.3f}, token F1 {oe['token_f1']:.3f}")
    if counts["bad_records"] or counts["undecodable"]:
        parts.append(f"{counts['bad_records']} bad records, {counts['undecodable']} unreadable media")
    print("; ".join(parts) + f"; details in {out / METRICS}")


def plot_categories(per_category: dict[str, dict[str, Any]], path: Path) -> Path:
    """Bars of each category's accuracies (generated letter, log-likelihood, exact match) into `path`."""
    import matplotlib  # lazy: only the chart needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after choosing the Agg backend

    series = {"multiple choice, generated letter": ("multiple_choice", "generated_accuracy"),
              "multiple choice, log-likelihood": ("multiple_choice", "log_likelihood_accuracy"),
              "open-ended, exact match": ("open_ended", "exact_match")}
    names = list(per_category)
    labels = [f"{n}\n(n={per_category[n]['questions']})" for n in names]
    shown = {label: [per_category[n].get(kind, {}).get(key) for n in names] for label, (kind, key) in series.items()}
    shown = {label: values for label, values in shown.items() if any(v is not None for v in values)}
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(names) + 2), 4.0))
    width = 0.8 / max(1, len(shown))
    for k, (label, values) in enumerate(shown.items()):
        ax.bar([i + k * width for i in range(len(names))], [v or 0.0 for v in values], width, label=label)
    ax.set_xticks([i + width * (len(shown) - 1) / 2 for i in range(len(names))], labels, fontsize="small")
    ax.set_ylim(0, 1.0)
    ax.set_ylabel("accuracy")
    if shown:
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=1, frameon=False)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    write_atomic(path, png.getvalue())
    return path
