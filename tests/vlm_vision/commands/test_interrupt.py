"""Ctrl-C in every command: a real process, SIGINT to its process group (as a terminal sends it).

Each command is started as `python -m vlm_vision.commands.main COMMAND ...` in a new session with work that
takes far longer than the test waits (stdout goes to `stdout.txt` beside stderr.txt), interrupted once
its work has begun (a first output, log line or message), and must then: exit 130 within 5 s; print no traceback; end stderr with the one
line `vlm-vision COMMAND: interrupted` (and, for a command that can resume, how); leave no
temporary file (`.NAME.PID.RAND.tmp`, `.tmp-NAME`) and no half-written folder.

The commands come from the CLI's parser: a command without a case in `CASES` fails
`test_every_command_has_an_interrupt_case`. Add a command with one `_<name>(root, shared) -> Case`
function and one line in `CASES`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.vlm_vision.eval_fixtures import held_out_records, write_held_out
from tests.vlm_vision.tiny_clip import save_tiny_clip
from tests.vlm_vision.train_fixtures import write_colour_dataset, write_llm_folder, write_tower_folder
from vlm_vision.commands import main as cli
REPO = Path(__file__).resolve().parents[3]
DATA = REPO / "tests" / "data"
STOP_WITHIN_S = 5.0
START_WITHIN_S = 240.0

pytestmark = pytest.mark.slow


@dataclasses.dataclass
class Case:
    """A long-running invocation, when its work has begun, and what an interrupt must leave."""

    argv: list[str]
    started: Callable[[str], bool]
    """stderr so far -> whether the work has begun (files may be checked too)."""
    out: Path
    """The output (folder or file) to inspect afterwards."""
    resume: str | None
    """Text of the resume hint (None: the command cannot resume)."""
    check: Callable[[Path], None] = lambda out: None
    """More assertions on what is left."""
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    """More environment variables for the process."""


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _extract(root: Path, shared: dict[str, Path]) -> Case:
    videos = root / "videos"
    videos.mkdir()
    for n in range(60):
        shutil.copy(DATA / "realshort.mp4", videos / f"v{n:02d}.mp4")
    out = root / "tokens"

    def check(out: Path) -> None:
        done = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
        assert {p.name for p in out.glob("*.safetensors")} == {Path(r["video"]).with_suffix(".safetensors").name
                                                               for r in done}  # every output is a finished one
        assert not (out / ".vlm-vision-extract.lock").exists()

    return Case([str(videos), "--out", str(out), "--model", str(shared["tower"]), "--num-frames", "4",
                 "--workers", "0"], lambda err: any(out.glob("*.safetensors")), out,
                "run the same command again", check)


def _train(root: Path, shared: dict[str, Path]) -> Case:
    data = write_colour_dataset(root / "media", n=4)
    out = root / "run"

    def check(out: Path) -> None:
        assert not (out / "final").exists()
        for checkpoint in out.glob("checkpoint-*"):  # whole, or not there
            assert (checkpoint / "trainer_state.json").is_file(), checkpoint

    return Case(["--llm", str(shared["llm"]), "--tower", str(shared["tower"]), "--data", str(data),
                 "--output-dir", str(out), "--max-steps", "100000", "--num-frames", "2", "--max-length", "256",
                 "--save-every", "2", "--no-progress"],
                lambda err: _lines(out / "log.jsonl") >= 3, out, "--resume", check)


def _eval(root: Path, shared: dict[str, Path]) -> Case:
    media = root / "media"
    videos = write_held_out(media, n=4)
    records = held_out_records(videos, media)
    data = root / "questions.jsonl"
    data.write_text("".join(json.dumps({**r, "id": f"{r['id']}-{k}"}) + "\n" for k in range(100) for r in records))
    out = root / "eval"

    def check(out: Path) -> None:
        assert not (out / "metrics.json").exists()
        for line in (out / "predictions.jsonl").read_bytes().splitlines(keepends=True)[:-1]:
            json.loads(line)  # whole lines (a last one cut short is dropped by the rerun)

    return Case(["--model", str(shared["trained"]), "--data", str(data), "--media-root", str(media),
                 "--output-dir", str(out), "--batch-size", "1", "--num-workers", "0", "--no-progress"],
                lambda err: _lines(out / "predictions.jsonl") >= 2, out, "run the same command again", check)


def _clip_train(root: Path, shared: dict[str, Path]) -> Case:
    from PIL import Image

    media = root / "media"
    media.mkdir()
    records = []
    for n, colour in enumerate(("red", "green", "blue", "yellow")):
        Image.new("RGB", (32, 32), colour).save(media / f"{colour}.png")
        records.append({"image": f"{colour}.png", "caption": f"a {colour} square"})
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = root / "clip"
    return Case(["--model", str(shared["clip"]), "--data", str(data), "--media-root", str(media),
                 "--output-dir", str(out), "--max-steps", "1000000", "--batch-size", "4", "--eval-fraction", "0"],
                lambda err: _lines(out / "log.jsonl") >= 2, out, None,
                lambda out: None)


def _convert_data(root: Path, shared: dict[str, Path]) -> Case:
    line = json.dumps({"id": "x", "video": "v.mp4", "conversations": [
        {"from": "human", "value": "<video>\nWhat happens?"}, {"from": "gpt", "value": "Something."}]}) + "\n"
    data = root / "big.jsonl"
    data.write_text(line * 400_000)
    out = root / "llava.json"
    return Case([str(data), "--output", str(out), "--skipped", str(root / "skipped.jsonl")],
                lambda err: "reading" in err, out, None)


def _export(root: Path, shared: dict[str, Path]) -> Case:
    out = root / "export"
    begun = time.monotonic()

    def check(out: Path) -> None:
        assert not out.exists()  # an export is whole or absent

    # A tiny model exports in a second or two once torch is up: interrupt while it loads and merges.
    return Case([str(shared["trained"]), "--out", str(out)], lambda err: time.monotonic() - begun > 2.0, out,
                None, check)


def _report(root: Path, shared: dict[str, Path]) -> Case:
    """An eval folder of 400 questions, each on its own copy of a real video: many seconds of decoding
    thumbnails before the page is written."""
    media = root / "media"
    media.mkdir()
    folder = root / "eval"
    folder.mkdir()
    rows = []
    for n in range(400):
        video = media / f"v{n:03d}.mp4"
        os.link(DATA / "realshort.mp4", video)
        rows.append({"id": f"q{n}", "source": "questions.jsonl", "category": None, "duration": 2.0,
                     "media": str(video), "frames": {"indices": [0, 1, 2, 3], "times": [0.0, 0.5, 1.0, 1.5]},
                     "tokens": {"text": 12, "visual": 16}, "type": "open_ended", "question": "Colour?",
                     "answer": ["red"], "prediction": "red", "correct": True,
                     "scores": {"exact_match": 1.0, "token_f1": 1.0}})
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "metrics.json").write_text(json.dumps({"overall": {}}))

    def check(out: Path) -> None:
        assert not out.exists()  # the page is written whole at the end, or not at all
        assert sorted(p.name for p in folder.iterdir()) == ["metrics.json", "predictions.jsonl"]

    return Case([str(folder)], lambda err: "report frames" in err, folder / "report.html", None, check)


def _demo(root: Path, shared: dict[str, Path]) -> Case:
    """The server, once it listens and holds an upload (its temporary folder under this test's TMPDIR)."""
    import urllib.request

    tmp = root / "tmp"
    tmp.mkdir()

    def started(err: str) -> bool:
        out = (root / "stdout.txt").read_text()
        if "http://" not in out:
            return False
        url = out.split("http://", 1)[1].split()[0]
        request = urllib.request.Request(f"http://{url}api/upload?name=clip.mp4", method="POST",
                                         data=(DATA / "realshort.mp4").read_bytes())
        with urllib.request.urlopen(request, timeout=60) as answer:
            assert answer.status == 200, answer.read()
        uploads = [p for p in tmp.glob("vlm-vision-demo-*") if any(p.iterdir())]
        assert len(uploads) == 1, list(tmp.iterdir())
        return True

    def check(out: Path) -> None:
        assert list(out.iterdir()) == []  # the uploads folder is gone
        assert "vlm-vision demo: stopped (uploads deleted)" in (root / "stdout.txt").read_text()

    return Case([str(shared["trained"]), "--port", "0", "--videos", str(DATA)], started, tmp, None, check,
                env={"TMPDIR": str(tmp)})


def _data_stats(root: Path, shared: dict[str, Path]) -> Case:
    """300,000 text records: the record store is built in seconds, its scan (the tokenizer, with two
    forked workers) takes far longer; interrupted once the store is there and the scan under way."""
    line = json.dumps({"id": "x", "conversations": [{"from": "human", "value": "What colour is the sky today?"},
                                                    {"from": "gpt", "value": "Blue, mostly."}]}) + "\n"
    data = root / "big.jsonl"
    data.write_text(line * 300_000)
    out = root / "stats"

    def check(out: Path) -> None:  # the store is whole (written atomically); no scan, stats or picture
        assert sorted(p.name.split("-")[0] for p in (out / "data-scan").iterdir()) == ["store"]
        assert sorted(p.name for p in out.iterdir()) == ["data-scan"]

    return Case([str(data), "--llm", str(shared["llm"]), "--tower", str(shared["tower"]), "--output-dir", str(out),
                 "--workers", "2"], lambda err: any(out.glob("data-scan/store-*.arrow")), out, None, check)


CASES: dict[str, Callable[[Path, dict[str, Path]], Case]] = {
    "extract": _extract,
    "train": _train,
    "eval": _eval,
    "clip-train": _clip_train,
    "convert-data": _convert_data,
    "export": _export,
    "report": _report,
    "demo": _demo,
    "data-stats": _data_stats,
}


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict[str, Path]:
    """A tiny LLM, tower, CLIP, and a trained folder (one step) for eval."""
    from vlm_vision import TrainConfig, train

    root = tmp_path_factory.mktemp("interrupt_models")
    paths = {"llm": write_llm_folder(root / "llm"), "tower": write_tower_folder(root / "tower"),
             "clip": save_tiny_clip(root / "clip")}
    data = write_colour_dataset(root / "media", n=2)
    paths["trained"] = train(TrainConfig(llm=str(paths["llm"]), tower=str(paths["tower"]), data=str(data),
                                         output_dir=str(root / "run"), stage=2, max_steps=1, num_frames=2,
                                         max_length=256, lora_r=4, lora_alpha=8, progress=False))
    return paths


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp-")]


def test_every_command_has_an_interrupt_case():
    commands = next(a for a in cli.build_parser()._actions if a.dest == "command").choices
    assert set(commands) == set(CASES), f"commands without an interrupt case: {sorted(set(commands) - set(CASES))}"


@pytest.mark.parametrize("command", list(CASES))
def test_ctrl_c_stops_within_5_s_with_exit_130_and_nothing_half_written(command, shared, tmp_path):
    case = CASES[command](tmp_path, shared)
    err_path = tmp_path / "stderr.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **case.env}
    with err_path.open("w") as err_file, (tmp_path / "stdout.txt").open("w") as out_file:
        proc = subprocess.Popen([sys.executable, "-m", "vlm_vision.commands.main", command, *case.argv], env=env, cwd=tmp_path,
                                stdout=out_file, stderr=err_file, start_new_session=True)
        try:
            deadline = time.monotonic() + START_WITHIN_S
            while not case.started(err_path.read_text()):
                assert proc.poll() is None, f"{command} ended before it was interrupted:\n{err_path.read_text()}"
                assert time.monotonic() < deadline, f"{command} did not start its work:\n{err_path.read_text()}"
                time.sleep(0.05)
            os.killpg(proc.pid, signal.SIGINT)
            sent = time.monotonic()
            code = proc.wait(timeout=30)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    err = err_path.read_text()
    assert code == 130, err[-3000:]
    assert took < STOP_WITHIN_S, f"stopped {took:.1f} s after Ctrl-C"
    assert "Traceback" not in err, err[-3000:]
    last = err.rstrip().split("\n")[-1]
    assert f"vlm-vision {command}: interrupted" in last, err[-3000:]
    assert err.count("interrupted") == 1
    if case.resume:
        assert case.resume in last
    assert _temporaries(tmp_path) == []
    if command in ("clip-train", "convert-data"):  # nothing to resume: nothing of theirs is left
        assert not case.out.exists()
    case.check(case.out)


def test_ctrl_c_while_a_checkpoint_is_flushed_leaves_no_half_checkpoint(shared, tmp_path, monkeypatch, capsys):
    """Ctrl-C at the worst moment of a save (flushing checkpoint-2 before its rename): the temporary
    folder goes, checkpoint-2 never appears, and the run says how to resume."""
    real_fsync = os.fsync

    def fsync(fd):
        if ".tmp-checkpoint-2" in os.readlink(f"/proc/self/fd/{fd}"):
            raise KeyboardInterrupt
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    case = _train(tmp_path, shared)
    argv = [a if a != "100000" else "4" for a in case.argv]
    assert cli.main(["train", *argv]) == 130
    assert "vlm-vision train: interrupted; to continue" in capsys.readouterr().err
    assert sorted(p.name for p in case.out.glob("*checkpoint*")) == []
    assert _temporaries(tmp_path) == []
