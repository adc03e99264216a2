"""`vlm-vision eval --report` and `vlm-vision report`: what eval records about what the model saw, the
refusal of an older eval folder, and the page itself opened in headless Chromium (frames of every
row, filters, charts, paging, comparison of two eval folders, no console errors)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.vlm_vision.browser import artifacts, browser_page
from tests.vlm_vision.eval_fixtures import COLOUR_QUESTION, NAMES, held_out_records, reference_run, trained_colour_model
from vlm_vision.commands.main import main

ROOT = Path(__file__).resolve().parents[3]
FRAMES = 4
# the tiny tower: 28 px images, 7 px patches -> a 4 x 4 grid; 2 x 2 pooling -> 2 x 2 = 4 tokens per frame
VISUAL_TOKENS = FRAMES * (28 // 7 // 2) ** 2


@pytest.fixture(scope="module")
def evals(tmp_path_factory):
    """The colour model evaluated twice: the held-out questions (all right), and those plus four
    mislabelled ones (wrong by construction) with `--report`."""
    paths = trained_colour_model(tmp_path_factory.getbasetemp() / "eval_colour")
    reference_run(paths)
    media = paths["media"]
    videos = sorted((media / "held_out").glob("*.mp4"))
    records = held_out_records(videos, media)
    for i, video in enumerate(videos[:4]):
        colour = video.stem.split("_")[0]
        wrong = NAMES[(NAMES.index(colour) + 1) % 4]
        records.append({"id": f"mis{i}", "video": str(video.relative_to(media)), "question": COLOUR_QUESTION,
                        "options": NAMES, "answer": wrong, "category": "mislabelled"})
    data = media / "mixed.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path_factory.getbasetemp() / "eval_report_mixed"
    if not (out / "report.html").is_file():
        assert main(["eval", "--model", str(paths["final"]), "--data", str(data), "--output-dir", str(out),
                     "--report", "--no-progress"]) == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return {"paths": paths, "mixed": out, "reference": paths["reference"], "rows": rows,
            "shots": artifacts(tmp_path_factory.getbasetemp())}


def test_predictions_record_frames_times_and_prompt_tokens(evals):
    from transformers import AutoTokenizer

    rows = {r["id"]: r for r in evals["rows"]}
    row = rows["open0"]
    assert Path(row["media"]).is_file() and row["media"].endswith(".mp4")
    # 4-frame videos at 8 fps (tests/vlm_vision/train_fixtures.py), 4 frames sampled: every frame, 1/8 s apart
    assert row["frames"] == {"indices": [0, 1, 2, 3], "times": [0.0, 0.125, 0.25, 0.375]}
    assert row["tokens"]["visual"] == VISUAL_TOKENS
    # text tokens: the chat prompt tokenized with its one <video> placeholder, less that placeholder
    tokenizer = AutoTokenizer.from_pretrained(evals["paths"]["final"])
    content = f"<video>\n{COLOUR_QUESTION}"
    text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)
    assert row["tokens"]["text"] == len(tokenizer(text, add_special_tokens=False)["input_ids"]) - 1
    assert rows["mc0"]["tokens"]["text"] > row["tokens"]["text"]  # the options and the letter instruction
    assert all(r["tokens"]["visual"] == VISUAL_TOKENS for r in evals["rows"])
    assert sum(not r["correct"]["generated"] for r in evals["rows"] if r["id"].startswith("mis")) == 4


def test_report_refuses_an_eval_folder_without_frames(evals, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(evals["reference"], old)
    lines = (old / "predictions.jsonl").read_text().splitlines()
    stripped = [{k: v for k, v in json.loads(line).items() if k not in ("frames", "tokens", "media")} for line in lines]
    (old / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stripped))
    (old / "report.html").unlink(missing_ok=True)
    assert main(["report", str(old)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("vlm-vision report: 16 of 16 predictions do not record the frames")
    assert "Traceback" not in "\n".join(err)
    assert not (old / "report.html").exists()
    assert main(["report", str(tmp_path)]) == 2
    assert "no predictions.jsonl" in capsys.readouterr().err


def _rows_shown(page) -> int:
    return page.locator("article.q").count()


def test_report_page_in_chromium(evals):
    report = evals["mixed"] / "report.html"
    rows = evals["rows"]
    html = report.read_text()
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html
    with browser_page() as (page, errors):
        page.goto(report.as_uri())
        page.wait_for_selector("body[data-ready='1']")
        # every row renders its frames, with their times, and its thumbnail strip decodes
        page.wait_for_function("[...document.querySelectorAll('article.q')].every(r => r.dataset.loaded === '1')")
        assert _rows_shown(page) == len(rows) == 20
        for r in page.locator("article.q").all():
            frames = r.locator(".frame")
            assert frames.count() == FRAMES == int(r.get_attribute("data-frames"))
            assert frames.nth(0).evaluate("f => getComputedStyle(f).backgroundImage").startswith('url("data:image/jpeg')
            assert [t.inner_text() for t in r.locator(".frame .t").all()] == ["0.00s", "0.13s", "0.25s", "0.38s"]
        # the charts: one bar per category and per duration bucket
        assert page.locator("#chart-category rect.bar-a").count() == 3
        assert page.locator("#chart-duration rect.bar-a").count() == 1
        assert "questions evaluated" in page.inner_text("#metrics")
        page.screenshot(path=str(evals["shots"] / "report.png"))
        # log-likelihood bars of a multiple-choice row, token counts
        first = page.locator("article.q[data-id='mc0']")
        assert first.locator(".opts li").count() == 4 and first.locator(".bar").count() == 4
        assert f"visual {VISUAL_TOKENS}" in first.locator(".tok").inner_text()
        # filters
        page.select_option("#f-res", "wrong")
        wrong = sum(not (r["correct"]["generated"] if r["type"] == "multiple_choice" else r["correct"]) for r in rows)
        assert _rows_shown(page) == wrong == 4
        assert page.locator("article.q.right").count() == 0
        page.select_option("#f-res", "")
        page.select_option("#f-cat", "colour (open)")
        assert _rows_shown(page) == 8
        page.select_option("#f-cat", "")
        page.fill("#f-text", "mis2")
        assert _rows_shown(page) == 1
        page.fill("#f-text", "")
        # paging
        page.select_option("#f-size", "10")
        assert _rows_shown(page) == 10 and page.inner_text("#page") == "page 1 of 2"
        page.click("#next")
        assert _rows_shown(page) == 10 and page.inner_text("#page") == "page 2 of 2"
        assert errors == []


def _edited_copy(folder: Path, to: Path) -> Path:
    """The eval folder with two answers made wrong by hand (mc1: letter A, open1: "red"), open7 dropped."""
    shutil.copytree(folder, to)
    rows = [json.loads(line) for line in (to / "predictions.jsonl").read_text().splitlines()]
    for r in rows:
        if r["id"] == "mc1":
            r["prediction"]["generated"] = r["prediction"]["generated_choice"] = "A"
            r["correct"]["generated"] = False
        if r["id"] == "open1":
            r["prediction"], r["correct"] = "red", False
    kept = [r for r in rows if r["id"] != "open7"]
    (to / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    return to


def test_compare_report_shows_where_models_disagree(evals, tmp_path):
    other = _edited_copy(evals["mixed"], tmp_path / "other")
    out = tmp_path / "compare.html"
    assert main(["report", str(evals["mixed"]), "--compare", str(other), "--output", str(out), "--no-progress"]) == 0
    with browser_page() as (page, errors):
        page.goto(out.as_uri())
        page.wait_for_selector("body[data-ready='1']")
        summary = page.inner_text("#comparison")
        assert "1 questions are missing from B" in summary
        assert "only A right\t2" in summary and "only B right\t0" in summary
        assert page.locator("#chart-category rect.bar-b").count() == 3
        page.select_option("#f-res", "disagree")
        assert sorted(r.get_attribute("data-id") for r in page.locator("article.q").all()) == ["mc1", "open1"]
        page.select_option("#f-res", "only-a")
        assert _rows_shown(page) == 2
        row = page.locator("article.q[data-id='mc1']")
        assert row.locator(".bar.b").count() == 4  # B's log-likelihood bars beside A's
        page.screenshot(path=str(evals["shots"] / "report_compare.png"))
        assert errors == []
