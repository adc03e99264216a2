"""`vlm-vision eval` end to end: the output folder, bad records and unreadable media counted, every
accepted spelling answered, and resuming after a line cut mid-write or a killed process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.vlm_vision.eval_fixtures import reference_run, trained_colour_model
from vlm_vision.commands.main import main
from vlm_vision.evaluation.run import EvalConfig, read_predictions, run_eval

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def colour(tmp_path_factory):
    paths = trained_colour_model(tmp_path_factory.getbasetemp() / "eval_colour")
    paths["data"] = reference_run(paths)
    paths["reference"] = {(r["source"], r["id"]): r for r in read_predictions(paths["reference"] / "predictions.jsonl")}
    return paths


def _config(colour, out, **overrides) -> EvalConfig:
    values = dict(model=str(colour["final"]), data=[str(colour["data"])], output_dir=str(out), progress=False)
    return EvalConfig(**{**values, **overrides})


def _rows(out: Path) -> dict:
    lines = (out / "predictions.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    keys = [(r["source"], r["id"]) for r in rows]
    assert len(keys) == len(set(keys)), "a question was written twice"
    return dict(zip(keys, rows))


def _same_as_reference(colour, rows: dict) -> None:
    assert rows.keys() == colour["reference"].keys()
    for key, row in rows.items():
        assert row["prediction"] == colour["reference"][key]["prediction"], key


def test_cli_answers_every_spelling_and_counts_bad_records_and_unreadable_media(colour, tmp_path, capsys):
    media = colour["media"]
    (media / "broken.mp4").write_bytes(b"this is not a video")
    green = "held_out/green_1.mp4"
    records = [
        {"id": "letter", "video": green, "question": "What colour is this video?",
         "options": ["red", "green", "blue", "yellow"], "answer": "B", "task_type": "spelling"},
        {"question_id": "index", "video_path": green, "query": "What colour is this video?",
         "candidates": ["red", "green", "blue", "yellow"], "label": 1, "task_type": "spelling"},
        {"qid": "prefixed", "video_file": green, "prompt": "<video>\nWhat colour is this video?",
         "choices": {"A": "A. red", "B": "B. green", "C": "C. blue", "D": "D. yellow"}, "answer": "(B)",
         "question_type": "spelling", "start": 0.0, "end": 0.5},
        {"uid": "numbered", "video": green, "question": "What colour is this video?", "a0": "red", "a1": "green",
         "a2": "blue", "a3": "yellow", "truth": "green", "category": "spelling"},
        {"id": "open", "video": green, "category": "spelling",
         "conversations": [{"from": "human", "value": "<video>\nWhat colour is this video?"},
                           {"from": "gpt", "value": "green"}]},
        {"id": "no-answer", "video": green, "question": "What colour is this video?"},
        {"id": "not-an-option", "video": green, "question": "Colour?", "options": ["red", "blue"], "answer": "green"},
        {"id": "no-file", "video": "held_out/missing.mp4", "question": "Colour?", "answer": "red"},
        {"id": "letter", "video": green, "question": "a duplicate id", "answer": "red"},
        {"id": "broken", "video": "broken.mp4", "question": "What colour is this video?", "answer": "red"},
    ]
    data = media / "spellings.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records[:5]) + "{not json\n"
                    + "".join(json.dumps(r) + "\n" for r in records[5:]))
    out = tmp_path / "out"
    assert main(["eval", "--model", str(colour["final"]), "--data", str(data), "--output-dir", str(out)]) == 0
    assert "q/s" in capsys.readouterr().err  # the progress bar's rate

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["counts"] == {"records": 11, "evaluated": 5, "bad_records": 5, "undecodable": 1, "resumed": 0}
    reasons = {b["id"]: b["reason"] for b in metrics["bad_records"]}
    assert "no answer" in reasons["no-answer"] and "is not one of the options" in reasons["not-an-option"]
    assert "missing media" in reasons["no-file"] and "duplicate id" in reasons["letter"]
    assert "not valid JSON" in reasons["spellings.jsonl:6"]
    assert metrics["undecodable"][0]["id"] == "broken" and "could not be decoded" in metrics["undecodable"][0]["reason"]
    spelling = metrics["per_category"]["spelling"]
    assert spelling["multiple_choice"]["questions"] == 4 and spelling["open_ended"]["questions"] == 1
    assert spelling["multiple_choice"]["log_likelihood_accuracy"] == 1.0
    assert spelling["open_ended"]["exact_match"] == 1.0
    assert metrics["per_duration"]["short (<2 min)"]["questions"] == 5
    assert metrics["settings"]["num_frames"] == 4 and metrics["model"]["kind"] == "trained"
    rows = _rows(out)
    assert len(rows) == 6 and rows[("spellings.jsonl", "broken")]["error"].startswith("video could not be decoded")
    assert {rows[("spellings.jsonl", k)]["answer"] for k in ("letter", "index", "prefixed", "numbered")} == {"B"}
    assert (out / "accuracy_by_category.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_rerun_skips_what_is_there_and_redoes_a_line_cut_mid_write(colour, tmp_path):
    out = tmp_path / "out"
    run_eval(_config(colour, out, limit=6))
    lines = (out / "predictions.jsonl").read_text().splitlines(keepends=True)
    kept = json.loads(lines[0])
    kept["question"] = "kept from the first run"  # a rerun must not ask this question again
    (out / "predictions.jsonl").write_text(json.dumps(kept) + "\n" + "".join(lines[1:3]) + lines[3][:25])

    metrics = run_eval(_config(colour, out))
    rows = _rows(out)
    assert metrics["counts"]["resumed"] == 3 and metrics["counts"]["evaluated"] == 16
    assert rows.pop((kept["source"], kept["id"]))["question"] == "kept from the first run"
    reference = dict(colour["reference"])
    reference.pop((kept["source"], kept["id"]))
    _same_as_reference({"reference": reference}, rows)


@pytest.mark.slow
def test_a_killed_run_resumes_where_it_stopped(colour, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "vlm_vision.commands.main", "eval", "--model", str(colour["final"]), "--data",
               str(colour["data"]), "--output-dir", str(out), "--batch-size", "1", "--num-workers", "0",
               "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    predictions = out / "predictions.jsonl"
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if predictions.exists() and predictions.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    written = predictions.read_bytes().count(b"\n")
    assert 2 <= written < 16 and not (out / "metrics.json").exists()

    metrics = run_eval(_config(colour, out))
    assert metrics["counts"]["resumed"] == written
    _same_as_reference(colour, _rows(out))


def test_predictions_of_another_model_or_setting_are_never_mixed(colour, tmp_path):
    out = tmp_path / "out"
    run_eval(_config(colour, out, limit=2))
    with pytest.raises(ValueError, match="another model or settings.*num_frames"):
        run_eval(_config(colour, out, num_frames=2))
    with pytest.raises(ValueError, match="another model or settings.*fingerprint"):
        (Path(colour["final"]).parent / "copy").mkdir(exist_ok=True)
        import shutil

        copy = Path(colour["final"]).parent / "copy" / "final"
        if not copy.exists():
            shutil.copytree(colour["final"], copy)
        (copy / "projector.safetensors").write_bytes((copy / "projector.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
        run_eval(_config(colour, out, model=str(copy)))


def test_training_reports_the_accuracy_vlm_vision_eval_reports(colour):
    """`vlm-vision train --eval-data ... --eval-accuracy` logs accuracy beside eval_loss at each
    evaluation; at the last one it equals `vlm-vision eval`'s on the run's final/."""
    from vlm_vision.evaluation.questions import log_fields

    log = [json.loads(line) for line in (colour["final"].parent / "log.jsonl").read_text().splitlines()]
    evals = [entry for entry in log if "eval_loss" in entry]
    assert [entry["step"] for entry in evals] == [15, 30]
    expected = log_fields(list(colour["reference"].values()))
    assert expected["eval_questions"] == 16 and expected["eval_mc_log_likelihood_accuracy"] >= 0.75
    assert {k: v for k, v in evals[-1].items() if k not in ("step", "eval_loss")} == expected


@pytest.mark.slow
def test_two_processes_answer_like_one(colour, tmp_path):
    out = tmp_path / "two"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "vlm_vision.commands.main", "eval", "--model", str(colour["final"]), "--data",
                           str(colour["data"]), "--output-dir", str(out), "--device", "cpu", "--num-workers", "0",
                           "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    _same_as_reference(colour, _rows(out))
    assert not list(out.glob("predictions.part-*"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["counts"]["evaluated"] == 16


def test_parts_a_killed_multi_process_run_left_are_kept(colour, tmp_path):
    # Two processes were killed: their parts hold 3 and 2 answers, the second with a line cut mid-write.
    out = tmp_path / "out"
    out.mkdir()
    reference = list(colour["reference"].values())
    (out / "predictions.part-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reference[0:6:2]))
    (out / "predictions.part-1.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reference[1:5:2])
                                                  + json.dumps(reference[5])[:30])
    run_eval(_config(colour, out, limit=1))  # writes run.json, merges the parts, answers nothing new
    metrics = run_eval(_config(colour, out))
    assert metrics["counts"]["resumed"] == 5 and not list(out.glob("predictions.part-*"))
    _same_as_reference(colour, _rows(out))
