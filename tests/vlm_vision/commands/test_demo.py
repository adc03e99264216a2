"""`vlm-vision demo`: the server started on a free port of 127.0.0.1 with the test suite's trained colour
model, driven in headless Chromium: a bundled video's frames and token budget, a question answered
(streamed), a text file renamed .mp4 refused on the page, an over-limit upload refused, only uploads
served, and a clean stop on SIGINT."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.vlm_vision.browser import artifacts, browser_page
from tests.vlm_vision.eval_fixtures import COLOUR_QUESTION, trained_colour_model
from vlm_vision.errors import InputError
from vlm_vision.commands.demo import BUNDLED, DemoConfig, _video_dirs
from vlm_vision.evaluation.demo_model import Sampling

ROOT = Path(__file__).resolve().parents[3]


def test_bad_model_or_videos_folder_is_one_line_exit_2(tmp_path, capsys):
    from vlm_vision.commands.main import main

    assert main(["demo", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"vlm-vision demo: cannot load the model ({tmp_path})")
    assert main(["demo", str(tmp_path), "--videos", str(tmp_path / "none")]) == 2
    assert f"folder not found (--videos {tmp_path / 'none'})" in capsys.readouterr().err


def test_defaults_bundled_videos_and_request_checks():
    import argparse

    from vlm_vision.commands.demo import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    flags = vars(parser.parse_args(["m"]))
    config = DemoConfig(model="m")
    assert {k: getattr(config, k) for k in flags if k != "videos"} == {k: v for k, v in flags.items() if k != "videos"}
    assert (config.host, config.port, config.max_upload_mb, config.max_upload_minutes) == ("127.0.0.1", 7860, 500, 120)
    assert _video_dirs(DemoConfig(model="m")) == [BUNDLED]
    assert sorted(p.name for p in BUNDLED.glob("*.mp4")) == ["box.mp4", "cockatoo.mp4", "cup.mp4", "realshort.mp4"]
    default = Sampling(8, None, False)
    assert Sampling.from_request({}, default) == default
    assert Sampling.from_request({"num_frames": "4", "fps": "1.5", "time_instruction": True}, default) == \
        Sampling(4, 1.5, True)
    for bad in ({"num_frames": 0}, {"num_frames": 1000}, {"fps": -1}, {"fps": "x"}):
        with pytest.raises(InputError):
            Sampling.from_request(bad, default)


def _start(args: list[str]) -> tuple[subprocess.Popen, str, list[str]]:
    """Start the demo; (process, its URL, its output lines so far, still growing)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vlm_vision.commands.main", "demo", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "http://" in line:
                found.set()

    threading.Thread(target=read, daemon=True).start()
    if not found.wait(120):
        proc.kill()
        raise AssertionError("the demo did not start:\n" + "".join(lines))
    url = next(line for line in lines if "http://" in line).split(" on ", 1)[1].split(" ", 1)[0]
    return proc, url, lines


def _post(url: str, data: bytes, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.mark.slow
def test_demo_in_chromium(tmp_path_factory, tmp_path):
    paths = trained_colour_model(tmp_path_factory.getbasetemp() / "eval_colour")
    shots = artifacts(tmp_path_factory.getbasetemp())
    held_out = paths["media"] / "held_out"
    proc, url, lines = _start([str(paths["final"]), "--port", "0", "--device", "cpu", "--max-upload-mb", "1",
                               "--videos", str(BUNDLED), "--videos", str(held_out)])
    try:
        assert url.startswith("http://127.0.0.1:")
        with browser_page(height=560) as (page, errors):
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']")
            labels = page.locator("#video option").all_inner_texts()
            assert "data/cup.mp4" in labels and "held_out/blue_2.mp4" in labels
            # a bundled video: its sampled frames (the model's 4) and token budget, then a streamed answer
            page.select_option("#video", label="held_out/blue_2.mp4")
            page.wait_for_function("document.querySelectorAll('#frames figure').length === 4")
            assert page.locator("#frames figcaption").all_inner_texts() == ["#0 · 0.00s", "#1 · 0.13s", "#2 · 0.25s",
                                                                           "#3 · 0.38s"]
            assert "16 visual" in page.inner_text("#budget")
            page.fill("#question", COLOUR_QUESTION)
            page.click("#ask")
            page.wait_for_selector("#answer[data-done='1']", timeout=60000)
            assert page.inner_text("#answer").strip() == "blue"
            page.screenshot(path=str(shots / "demo.png"))
            # settings on the page: two frames of a real video
            page.select_option("#video", label="data/cup.mp4")
            page.wait_for_function("document.querySelectorAll('#frames figure').length > 0")
            page.fill("#num-frames", "2")
            page.click("#show")
            page.wait_for_function("document.querySelectorAll('#frames figure').length === 2")
            # a text file renamed .mp4: refused with a message on the page
            fake = tmp_path / "notes.mp4"
            fake.write_text("these are notes, not a video\n")
            page.set_input_files("#upload", str(fake))
            page.wait_for_function("document.getElementById('error').textContent.length > 0")
            assert "notes.mp4: not a video" in page.inner_text("#error")
            page.screenshot(path=str(shots / "demo_bad_upload.png"))
            # over the size limit (1 MB here): refused before it is sent
            page.set_input_files("#upload", str(BUNDLED / "box.mp4"))
            page.wait_for_function("document.getElementById('error').textContent.includes('at most 1 MB')")
            # a real upload: listed, shown, and served back
            page.set_input_files("#upload", str(BUNDLED / "realshort.mp4"))
            page.wait_for_function("document.getElementById('upload-status').textContent.startsWith('uploaded')")
            assert page.inner_text("#error") == ""
            src = page.get_attribute("#player", "src")
            with urllib.request.urlopen(url.rstrip("/") + src, timeout=30) as reply:
                assert reply.read() == (BUNDLED / "realshort.mp4").read_bytes()
            # the expected refusals above are logged by the browser as failed loads; nothing else is
            assert [e for e in errors if "status of 400" not in e] == []
        # the server checks the size too, and serves nothing but uploads
        status, body = _post(url + "api/upload?name=big.mp4", b"x" * 1_000_001)
        assert status == 413 and b"at most 1 MB" in body
        for path in ("tests/data/cup.mp4", "uploads/../README.md", "README.md", "vlm_vision/evaluation/demo_page.html"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(url + path, timeout=30)
            assert e.value.code == 404, path
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
    assert code == 130, "".join(lines)  # Ctrl-C: exit 130, as every command
    assert "vlm-vision demo: stopped (uploads deleted)" in "".join(lines)
    assert "vlm-vision demo: interrupted" in "".join(lines) and "Traceback" not in "".join(lines)
    port = int(url.rsplit(":", 1)[1].strip("/"))
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
