"""`vlm-vision report`: one self-contained HTML page of an eval folder, to see what the model saw and said.

    vlm-vision report evals/s2                        # writes evals/s2/report.html
    vlm-vision report evals/s2 --compare evals/s1     # the same page, with where the two models disagree
    vlm-vision eval ... --report                      # the same, right after the evaluation

For each question the page shows the frames the model saw (a strip of thumbnails with their
presentation times), the question and options, the model's answer and the ground truth, each
option's log-likelihood (multiple choice) and the prompt's text and visual token counts. At the
top: the overall metrics, accuracy per category and per duration bucket as charts, and filters
(category, duration, right or wrong, text search).

Why one file with everything inline: a page opened from disk may not fetch the files beside it, so
the rows and thumbnails are JSON inside the page. Thumbnails are one small JPEG strip per question
(shared by questions on the same frames), and only the rows of the page on screen get their images,
so a report of thousands of questions opens quickly (sizes and load times in benchmarks/RESULTS.md).

Where the frames come from: `vlm-vision eval` records each question's medium, window, frame indices
and presentation times in `predictions.jsonl`; the report decodes the video again with the recorded
sampling and checks that the indices are the recorded ones (a mismatch is marked on the row). An
eval folder written before these fields existed is refused (exit 2): evaluate it again.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import time
from importlib import resources
from pathlib import Path
from typing import Any

from video.atomic_files import write_atomic
from vlm_vision.errors import InputError
from vlm_vision.evaluation.questions import duration_bucket

__all__ = ["ReportConfig", "EvalFolder", "report_path", "read_eval_folder", "strip_jpeg", "report_rows",
           "render_report", "write_report"]

REPORT = "report.html"
TEMPLATE = "report_template.html"
DATA_MARK = "/*__REPORT_DATA__*/null"


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """One report; `vlm-vision report` takes each field as a flag."""

    eval_dir: str
    """The `vlm-vision eval` output folder (predictions.jsonl, metrics.json, run.json)."""
    compare: str | None = None
    """A second eval folder of the same questions: its answers beside these, and where they disagree."""
    output: str | None = None
    """Where the page goes (default: EVAL_DIR/report.html)."""
    thumb_height: int = 48
    """Thumbnail height in pixels."""
    jpeg_quality: int = 70
    """JPEG quality of the thumbnails (1-95)."""
    page_size: int = 50
    """Questions per page."""
    progress: bool = True
    """Show a progress bar while decoding frames."""

    def __post_init__(self) -> None:
        """Refuse a value no page can have (`ValueError` naming the field; the CLI names its flag)."""
        for name in ("thumb_height", "page_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if not 1 <= self.jpeg_quality <= 95:
            raise ValueError(f"jpeg_quality must be a JPEG quality from 1 to 95, got {self.jpeg_quality!r}")


EVAL_DIR_EXPECTED = "a `vlm-vision eval` output folder (predictions.jsonl, metrics.json)"


def report_path(config: ReportConfig) -> Path:
    """Where the page of `config` goes: `config.output`, else EVAL_DIR/report.html."""
    return Path(config.output) if config.output else Path(config.eval_dir) / REPORT


@dataclasses.dataclass
class EvalFolder:
    """An eval folder's files, read: `rows` (predictions.jsonl), `metrics` (metrics.json), `run` (run.json)."""

    path: Path
    rows: list[dict[str, Any]]
    metrics: dict[str, Any]
    run: dict[str, Any]


def read_eval_folder(folder: str | Path) -> EvalFolder:
    """Read an eval folder and check that its predictions record what the model saw.

    Raises:
        InputError: not an eval folder, or predictions written before frames and token counts were recorded.
    """
    path = Path(folder)
    for name in ("predictions.jsonl", "metrics.json"):
        if not (path / name).is_file():
            raise InputError(f"no {name}", path, EVAL_DIR_EXPECTED)
    lines = (path / "predictions.jsonl").read_text(encoding="utf-8", errors="replace").splitlines()
    rows = [_json(line, path / "predictions.jsonl", f"line {n}") for n, line in enumerate(lines, 1) if line.strip()]
    metrics = _json((path / "metrics.json").read_text(encoding="utf-8", errors="replace"), path / "metrics.json")
    run = (_json((path / "run.json").read_text(encoding="utf-8", errors="replace"), path / "run.json")
           if (path / "run.json").is_file() else {})
    if not rows:
        raise InputError("no predictions", path / "predictions.jsonl", "at least one answered question")
    old = [r["id"] for r in rows if "error" not in r and ("tokens" not in r or "media" not in r)]
    if old:
        raise InputError(f"{len(old)} of {len(rows)} predictions do not record the frames and prompt tokens the model "
                         f"saw (first: {old[0]!r})", path / "predictions.jsonl",
                         "predictions.jsonl from `vlm-vision eval` of this version (fields media, frames, tokens)",
                         hint="this folder was evaluated by an older version: run `vlm-vision eval ... --report` "
                              "again into a new --output-dir")
    return EvalFolder(path, rows, metrics, run)


def _json(text: str, path: Path, where: str = "") -> dict[str, Any]:
    """One JSON object of an eval file (`where`: which line).

    Raises:
        InputError: not JSON, or not an object, naming the file (and line).
    """
    source = f"{path}{', ' + where if where else ''}"
    try:
        value = json.loads(text)
    except ValueError as e:
        raise InputError("not JSON", source, f"a JSON object, as `vlm-vision eval` writes ({e})",
                         hint=f"it starts with {text.strip()[:40]!r}") from None
    if not isinstance(value, dict):
        raise InputError("not a JSON object", source, "a JSON object, as `vlm-vision eval` writes")
    return value


# ----- thumbnails ---------------------------------------------------------------------------------


def strip_jpeg(frames: Any, height: int, quality: int) -> tuple[bytes, int]:
    """uint8[T, H, W, 3] frames side by side as one JPEG, each `height` pixels high; (jpeg, frame width)."""
    from PIL import Image  # lazy: pillow, for thumbnails only

    t, h, w, _ = frames.shape
    width = max(1, round(height * w / h))
    strip = Image.new("RGB", (width * t, height))
    for k in range(t):
        strip.paste(Image.fromarray(frames[k].numpy()).resize((width, height), Image.Resampling.BILINEAR),
                    (k * width, 0))
    out = io.BytesIO()
    strip.save(out, format="JPEG", quality=quality, optimize=True)
    return out.getvalue(), width


def _image_jpeg(path: str, height: int, quality: int) -> tuple[bytes, int]:
    """An image file as a `height`-pixel JPEG thumbnail; (jpeg, width)."""
    from PIL import Image  # lazy: as strip_jpeg

    with Image.open(path) as image:
        image = image.convert("RGB")
        width = max(1, round(height * image.width / image.height))
        out = io.BytesIO()
        image.resize((width, height), Image.Resampling.BILINEAR).save(out, format="JPEG", quality=quality)
    return out.getvalue(), width


def _sampling(row: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """`video.load_video` arguments that sample the row's frames again (the run's fps mode, else uniform)."""
    window = row.get("window") or [None, None]
    if settings.get("fps") is not None:
        keys = ("fps", "min_frames", "max_frames")
        frames = {k: settings[k] for k in keys if settings.get(k) is not None}
    else:
        frames = {"num_frames": len(row["frames"]["indices"])}
    return {**frames, "start": window[0], "end": window[1]}


def _thumbnail(row: dict[str, Any], settings: dict[str, Any], config: ReportConfig) -> dict[str, Any]:
    """The row's strip: {"jpeg", "width"} and a `note` when the frames could not be shown as recorded."""
    from video.clip import VideoDecodeError  # lazy: the decoder, for thumbnails only
    from video.decode import load_video  # lazy: the decoder, for thumbnails only

    media = row["media"]
    try:
        if "frames" not in row:
            jpeg, width = _image_jpeg(media, config.thumb_height, config.jpeg_quality)
            return {"jpeg": jpeg, "width": width}
        if media.endswith(".safetensors"):
            return {"note": "pooled tokens from a token file: no frames to show"}
        clip = load_video(media, **_sampling(row, settings))
        jpeg, width = strip_jpeg(clip.frames, config.thumb_height, config.jpeg_quality)
        out: dict[str, Any] = {"jpeg": jpeg, "width": width}
        if list(clip.indices) != row["frames"]["indices"]:
            out["note"] = (f"decoded frames {list(clip.indices)} differ from the recorded {row['frames']['indices']}"
                           " (has the video changed?)")
        return out
    except (VideoDecodeError, OSError, ValueError) as e:
        return {"note": f"frames could not be decoded again: {getattr(e, 'reason', e)}"}


def _thumbnails(rows: list[dict[str, Any]], settings: dict[str, Any], config: ReportConfig
                ) -> tuple[list[str], dict[tuple, tuple[int, int, str | None]]]:
    """Data URLs of every distinct strip, and per (media, window, indices) key: (strip index or -1, width, note)."""
    from tqdm.auto import tqdm  # lazy: progress bar, for a report only

    urls: list[str] = []
    done: dict[tuple, tuple[int, int, str | None]] = {}
    for row in tqdm([r for r in rows if "media" in r and "error" not in r], desc="report frames", unit="q",
                    disable=not config.progress):
        key = _strip_key(row)
        if key in done:
            continue
        thumb = _thumbnail(row, settings, config)
        index = -1
        if "jpeg" in thumb:
            urls.append("data:image/jpeg;base64," + base64.b64encode(thumb["jpeg"]).decode())
            index = len(urls) - 1
        done[key] = (index, thumb.get("width", 0), thumb.get("note"))
    return urls, done


def _strip_key(row: dict[str, Any]) -> tuple:
    return row["media"], tuple(row.get("window") or ()), tuple((row.get("frames") or {}).get("indices") or ())


# ----- rows ---------------------------------------------------------------------------------------


def _answer(row: dict[str, Any]) -> dict[str, Any]:
    """The parts of a prediction row that differ between models: answer, right or wrong, scores, tokens."""
    if "error" in row:
        return {"err": row["error"]}
    out: dict[str, Any] = {"tok": row.get("tokens")}
    if row["type"] == "multiple_choice":
        p = row["prediction"]
        out.update(ans=p["generated"], pick=p["generated_choice"], llpick=p["log_likelihood_choice"],
                   ll=row["scores"]["log_likelihood"], ok=row["correct"]["generated"],
                   okll=row["correct"]["log_likelihood"])
    else:
        out.update(ans=row["prediction"], ok=bool(row["correct"]), f1=row["scores"]["token_f1"])
    return out


def report_rows(rows: list[dict[str, Any]], strips: dict[tuple, tuple[int, int, str | None]],
                other: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The page's compact rows: the question, its frames and strip, and each model's answer (`a`, `b`)."""
    theirs = {(r["source"], r["id"]): r for r in other or []}
    out = []
    for r in rows:
        item: dict[str, Any] = {"id": r["id"], "src": r["source"], "cat": r.get("category") or "uncategorized",
                                "dur": duration_bucket(r.get("duration")), "secs": r.get("duration"),
                                "media": Path(r.get("media", "")).name, "a": _answer(r)}
        if "error" not in r:
            item.update(type=r["type"], q=r["question"], opts=r.get("options"), gt=r["answer"])
            frames = r.get("frames") or {}
            item["times"], item["idx"] = frames.get("times"), frames.get("indices")
            item["strip"], item["fw"], item["note"] = strips.get(_strip_key(r), (-1, 0, None))
        if other is not None:
            match = theirs.get((r["source"], r["id"]))
            item["b"] = _answer(match) if match is not None else None
        out.append(item)
    return out


def _model_name(folder: EvalFolder) -> str:
    model = folder.run.get("model") or folder.metrics.get("model") or {}
    return str(model.get("path") or model.get("name") or folder.path.name) if isinstance(model, dict) else str(model)


def render_report(data: dict[str, Any]) -> str:
    """The HTML page: the packaged template with `data` inline as JSON."""
    template = resources.files("vlm_vision.evaluation").joinpath(TEMPLATE).read_text(encoding="utf-8")
    blob = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")  # no `</script>` inside the script
    page = template.replace(DATA_MARK, blob, 1)
    return page.replace("__TITLE__", html.escape(data.get("title", "eval report")), 1)


def write_report(config: ReportConfig) -> Path:
    """Write the report of `config.eval_dir` (and `config.compare`); returns its path.

    Raises:
        InputError: an eval folder is missing its files or predates the recorded frames (whether the
            folders exist and the page's path is writable is the caller's to check first, as
            `vlm-vision report` does).
    """
    path = report_path(config)
    ours = read_eval_folder(config.eval_dir)
    other = read_eval_folder(config.compare) if config.compare else None
    settings = ours.run.get("settings") or ours.metrics.get("settings") or {}
    started = time.perf_counter()
    urls, strips = _thumbnails(ours.rows, settings, config)
    models = [{"name": _model_name(f), "dir": str(f.path.resolve()), "metrics": {k: f.metrics.get(k) for k in
               ("overall", "counts", "settings", "per_category", "per_duration")}}
              for f in ([ours] + ([other] if other else []))]
    data = {"title": f"eval report: {_model_name(ours)}", "models": models,
            "rows": report_rows(ours.rows, strips, other.rows if other else None), "strips": urls,
            "pageSize": config.page_size, "thumbHeight": config.thumb_height, "made": time.strftime("%Y-%m-%d %H:%M:%S"),
            "seconds": round(time.perf_counter() - started, 2)}
    write_atomic(path, render_report(data).encode("utf-8"))
    return path
