"""`vlm-vision extract` end to end: bad files, resume, overwrite, preview, several processes, weights,
a frame budget (per-video stride as the model chooses it)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from projector import build_projector
from tests.video.synth import corrupt_file, make_audio_only, make_numbered_video, make_video_folder, truncate_file
from video import load_video, load_video_tokens, spatial_pool
from video.corpus.plan import output_name
from vlm_vision import CLIPVisionTower, VisionLanguageModel
from vlm_vision.commands.main import main

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=28,
            patch_size=7)
REPO = pathlib.Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> pathlib.Path:
    """A transformers CLIPVisionModel folder with tiny random weights, as a user would pass to --model."""
    folder = tmp_path_factory.mktemp("tiny_clip")
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(**TINY)).save_pretrained(folder)
    return folder


@pytest.fixture
def videos(tmp_path) -> pathlib.Path:
    """A folder of three small good videos, one of them in a subfolder."""
    return make_video_folder(tmp_path / "videos")


def extract(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["extract", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def manifest(out: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def outputs(out: pathlib.Path) -> dict[str, float]:
    """Output file name -> modification time (ns)."""
    return {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix in (".safetensors", ".png")}


# ----- the command ------------------------------------------------------------------------------

def test_flags_default_to_the_settings_defaults():
    """Every `ExtractSettings` field is a flag, with the field's default and choices (written once, there)."""
    import argparse
    import dataclasses

    from video.corpus.settings import ExtractSettings
    from vlm_vision.commands.extract import add_arguments, settings_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["video.mp4", "--out", "out"])
    assert settings_from_args(args) == ExtractSettings()
    actions = {a.dest: a for a in parser._actions}
    for field in dataclasses.fields(ExtractSettings):
        assert parser.get_default(field.name) == field.default, field.name
        assert actions[field.name].choices == field.metadata.get("choices"), field.name
    assert settings_from_args(parser.parse_args(["v.mp4", "--out", "o", "--fps", "2", "--preview", "--workers", "0"])
                              ) == ExtractSettings(fps=2.0, preview=True, workers=0)


def test_tokens_equal_the_library_call(capsys, tmp_path, tiny_model, videos):
    out = tmp_path / "out"
    code, stdout, _ = extract(capsys, videos / "a.mp4", "--out", out, "--model", tiny_model, "--num-frames", 5,
                              "--workers", 1)
    assert code == 0
    assert "a.mp4: tokens (5, 4, 32)" in stdout
    got = load_video_tokens(out / "a.safetensors")
    tower = CLIPVisionTower.from_pretrained(tiny_model)
    # frames leave the decoder process resized for the tower (video.frame_scale)
    clip = load_video(videos / "a.mp4", num_frames=5, frame_scale=tower.image_transform.frame_scale())
    expected = spatial_pool(tower(tower.image_transform(clip.frames)), grid=(4, 4), stride=2, mode="average")
    torch.testing.assert_close(got.tokens, expected, rtol=1e-5, atol=1e-6)
    assert got.indices == list(clip.indices) and got.model == str(tiny_model) and not got.random_weights
    assert [r["status"] for r in manifest(out)] == ["ok"]


def test_bad_files_are_reported_and_the_others_written(capsys, tmp_path, tiny_model, data_dir):
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(data_dir / "realshort.mp4", folder / "good.mp4")
    make_numbered_video(folder / "good2.mp4", 8)
    corrupt_file(data_dir / "realshort.mp4", folder / "corrupt.mp4", start=0.0, length=20000)
    truncate_file(data_dir / "realshort.mp4", folder / "truncated.mp4", keep=0.3)
    (folder / "notes.mp4").write_text("this is a text file, not a video\n" * 50)
    make_audio_only(folder / "audio.mp4")
    out = tmp_path / "out"

    code, stdout, _ = extract(capsys, folder, "--out", out, "--model", tiny_model, "--num-frames", 4,
                              "--workers", 2)

    assert code != 0
    assert sorted(outputs(out)) == ["good.safetensors", "good2.safetensors"]
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []
    status = {pathlib.Path(r["video"]).name: r for r in manifest(out)}
    assert {k: v["status"] for k, v in status.items()} == {
        "audio.mp4": "error", "corrupt.mp4": "error", "good.mp4": "ok", "good2.mp4": "ok", "notes.mp4": "error",
        "truncated.mp4": "error"}
    assert all(status[k]["reason"] for k in ("audio.mp4", "corrupt.mp4", "notes.mp4", "truncated.mp4"))
    assert "4 failed" in stdout and "notes.mp4" in stdout.split("failed videos")[1]
    assert load_video_tokens(out / "good.safetensors").tokens.shape == (4, 4, 32)


def test_resume_after_an_interruption_writes_only_what_is_missing(capsys, tmp_path, tiny_model, videos):
    out = tmp_path / "out"
    assert extract(capsys, videos, "--out", out, "--model", tiny_model, "--num-frames", 3, "--workers", 0)[0] == 0
    before = outputs(out)
    assert sorted(before) == ["a.safetensors", "b.safetensors", "sub__c.safetensors"]
    # Interrupted while writing c: its output is missing and a temporary file is left over.
    (out / "sub__c.safetensors").unlink()
    leftover = out / ".sub__c.safetensors.abc123.tmp"
    leftover.write_bytes(b"half a file")
    stale = out / ".a.safetensors.def456.tmp"  # an interrupted --overwrite of a finished output
    stale.write_bytes(b"half a file")
    time.sleep(0.01)

    code, stdout, _ = extract(capsys, videos, "--out", out, "--model", tiny_model, "--num-frames", 3)

    assert code == 0
    after = outputs(out)
    assert after["a.safetensors"] == before["a.safetensors"] and after["b.safetensors"] == before["b.safetensors"]
    assert load_video_tokens(out / "sub__c.safetensors").tokens.shape == (3, 4, 32)
    assert not leftover.exists() and not stale.exists()
    second_run = manifest(out)[3:]
    assert sorted((pathlib.Path(r["video"]).name, r["status"]) for r in second_run) == [
        ("a.mp4", "skipped-existing"), ("b.mkv", "skipped-existing"), ("c.mp4", "ok")]
    assert "a.mp4: tokens (3, 4, 32) (already done)" in stdout


def test_changed_settings_are_extracted_again_and_overwrite_redoes(capsys, tmp_path, tiny_model, videos):
    out = tmp_path / "out"
    args = [videos / "a.mp4", "--out", out, "--model", tiny_model, "--workers", 0]
    assert extract(capsys, *args, "--num-frames", 3)[0] == 0
    first = outputs(out)["a.safetensors"]

    time.sleep(0.01)
    code, stdout, _ = extract(capsys, *args, "--num-frames", 5)
    assert code == 0 and "extracted again: the existing output differs: num_frames: 3 there, 5 now" in stdout
    assert outputs(out)["a.safetensors"] != first
    assert load_video_tokens(out / "a.safetensors").tokens.shape[0] == 5
    assert "num_frames: 3 there, 5 now" in manifest(out)[-1]["reason"]

    second = outputs(out)["a.safetensors"]
    assert extract(capsys, *args, "--num-frames", 5)[0] == 0
    assert outputs(out)["a.safetensors"] == second and manifest(out)[-1]["status"] == "skipped-existing"
    time.sleep(0.01)
    assert extract(capsys, *args, "--num-frames", 5, "--overwrite")[0] == 0
    assert outputs(out)["a.safetensors"] != second


def test_workers_do_not_change_the_tokens(capsys, tmp_path, tiny_model, videos):
    for workers in (0, 2):
        assert extract(capsys, videos, "--out", tmp_path / f"w{workers}", "--model", tiny_model, "--num-frames", 4,
                       "--workers", workers)[0] == 0
    for name in ("a", "b", "sub__c"):
        assert torch.equal(load_video_tokens(tmp_path / "w0" / f"{name}.safetensors").tokens,
                           load_video_tokens(tmp_path / "w2" / f"{name}.safetensors").tokens)


def test_frames_preprocessed_on_the_tower_device_match_worker_preprocessing(tmp_path, tiny_model, videos):
    """The GPU layout (uint8 frames to the tower, preprocessed there) gives the CPU layout's tokens."""
    from video.corpus.decode_jobs import DecodeJobs
    from video.corpus.encode import encode_and_save
    from video.corpus.settings import ExtractSettings

    tower = CLIPVisionTower.from_pretrained(tiny_model)
    kwargs = {"num_frames": 4, "fps": None, "max_frames": None, "sampling": "exact"}
    in_worker = DecodeJobs([videos / "a.mp4"], load_kwargs=kwargs, transform=tower.image_transform)[0]
    as_uint8 = DecodeJobs([videos / "a.mp4"], load_kwargs=kwargs, transform=None)[0]
    assert in_worker.pixels is not None and in_worker.clip.frames.numel() == 0
    assert as_uint8.pixels is None and as_uint8.clip.frames.dtype == torch.uint8
    config = ExtractSettings(num_frames=4, pool_stride=2, pool_mode="average", sampling="exact")
    settings = {"num_frames": 4, "fps": None}
    for name, item in (("worker", in_worker), ("device", as_uint8)):
        encode_and_save(item, videos / "a.mp4", tmp_path / f"{name}.safetensors", tower, config, "tiny", settings)
    assert torch.equal(load_video_tokens(tmp_path / "worker.safetensors").tokens,
                       load_video_tokens(tmp_path / "device.safetensors").tokens)


def test_preview_contact_sheet(capsys, tmp_path, tiny_model, data_dir):
    out = tmp_path / "out"
    code, _, _ = extract(capsys, data_dir / "realshort.mp4", "--out", out, "--model", tiny_model, "--num-frames", 4,
                         "--preview", "--workers", 0, "--full-resolution-frames")
    assert code == 0
    with Image.open(out / "realshort.png") as sheet:  # 4 thumbnails of 192 x 144 (320x240 video) in one row
        assert sheet.size == (4 * 192 + 5 * 4, 144 + 2 * 4)
    # the sheet keeps its display size when the decoder resizes the frames for the tower (28 px here:
    # 37x28 frames, whose aspect is the source's to a pixel)
    code, _, _ = extract(capsys, data_dir / "realshort.mp4", "--out", out, "--model", tiny_model, "--num-frames", 4,
                         "--preview", "--workers", 0)
    with Image.open(out / "realshort.png") as sheet:
        assert sheet.size[0] == 4 * 192 + 5 * 4 and abs(sheet.size[1] - (144 + 2 * 4)) <= 1


def test_same_stem_in_two_folders_gives_two_outputs_under_their_parent(capsys, tmp_path, tiny_model):
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        make_numbered_video(tmp_path / sub / "clip.mp4", 6)
    out = tmp_path / "out"
    assert extract(capsys, tmp_path, "--out", out, "--model", tiny_model, "--num-frames", 2, "--workers", 0)[0] == 0
    assert sorted(outputs(out)) == ["x__clip.safetensors", "y__clip.safetensors"]


def test_missing_default_weights_point_to_random_weights(capsys, tmp_path, videos, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    out = tmp_path / "out"
    code, _, err = extract(capsys, videos / "a.mp4", "--out", out)
    assert code == 2
    assert "openai/clip-vit-large-patch14-336" in err and "not available" in err and "--random-weights" in err
    assert not list(out.glob("*.safetensors"))


def test_random_weights_are_labelled(capsys, tmp_path, tiny_model, videos):
    out = tmp_path / "out"
    code, stdout, err = extract(capsys, videos / "a.mp4", "--out", out, "--model", tiny_model, "--random-weights",
                                "--num-frames", 2, "--workers", 0)
    assert code == 0
    assert "RANDOM WEIGHTS" in stdout and "RANDOM WEIGHTS" in err
    got = load_video_tokens(out / "a.safetensors")
    assert got.random_weights and got.model.startswith("random:")
    assert manifest(out)[0]["random_weights"] is True


def test_random_weights_need_an_architecture(capsys, tmp_path, videos):
    code, _, err = extract(capsys, videos / "a.mp4", "--out", tmp_path, "--random-weights", "--model", "nonsense")
    assert code == 2 and "needs an architecture (--model nonsense)" in err and "Traceback" not in err


def test_pooling_that_does_not_fit_the_tower_fails_before_decoding(capsys, tmp_path, tiny_model, videos):
    out = tmp_path / "out"
    code, _, err = extract(capsys, videos, "--out", out, "--model", tiny_model, "--pool-stride", 3)
    assert code == 2 and "4x4 patch grid" in err
    assert not list(out.glob("*.safetensors")) and not (out / "manifest.jsonl").exists()


def test_no_videos_found(capsys, tmp_path, tiny_model):
    (tmp_path / "empty").mkdir()
    code, _, err = extract(capsys, tmp_path / "empty", "--out", tmp_path / "out", "--model", tiny_model)
    assert code == 2 and "no videos found" in err


# ----- processes --------------------------------------------------------------------------------

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def test_console_script(tmp_path, tiny_model, videos):
    script = pathlib.Path(sys.executable).parent / "vlm-vision"
    out = tmp_path / "out"
    done = subprocess.run([str(script), "extract", str(videos / "b.mkv"), "--out", str(out), "--model",
                           str(tiny_model), "--num-frames", "2", "--workers", "0"],
                          capture_output=True, text=True, env=_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "b.mkv: tokens (2, 4, 32)" in done.stdout


def _many_videos_command(tmp_path: pathlib.Path, count: int, out: pathlib.Path, tiny_model, *,
                         workers: int) -> list[str]:
    """`vlm-vision extract` over a new folder of `count` 30-frame videos (v00.mp4, ...), 8 frames each."""
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(count):
        make_numbered_video(folder / f"v{i:02d}.mp4", 30)
    return [sys.executable, "-m", "vlm_vision.commands.main", "extract", str(folder), "--out", str(out), "--model",
            str(tiny_model), "--num-frames", "8", "--workers", str(workers)]


@pytest.mark.slow
def test_killed_run_resumes_with_nothing_lost_or_written_twice(tmp_path, tiny_model):
    out = tmp_path / "out"
    cmd = _many_videos_command(tmp_path, 12, out, tiny_model, workers=1)
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.glob("*.safetensors")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = outputs(out)
    assert 1 <= len(first) <= 12
    for name in first:  # whatever exists is complete
        assert load_video_tokens(out / name).tokens.shape == (8, 4, 32)

    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    after = outputs(out)
    assert len(after) == 12 and all(after[n] == t for n, t in first.items())
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    last = {}
    for r in manifest(out):
        last[r["video"]] = r["status"]
    assert set(last.values()) <= {"ok", "skipped-existing"} and len(last) == 12


@pytest.mark.slow
def test_accelerate_launch_splits_the_videos(tmp_path, tiny_model, videos):
    make_numbered_video(videos / "d.mp4", 7)
    out = tmp_path / "out"
    accelerate = pathlib.Path(sys.executable).parent / "accelerate"
    # `--cpu --num_processes 2` starts a single process unless MPI is set up; `--multi_gpu` starts two
    # through torchrun, and without CUDA the command joins them over gloo on the CPU.
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "vlm_vision.commands.main", "extract", str(videos), "--out", str(out), "--model", str(tiny_model),
           "--num-frames", "2", "--workers", "0"]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(outputs(out)) == ["a.safetensors", "b.safetensors", "d.safetensors", "sub__c.safetensors"]
    records = manifest(out)
    assert sorted(pathlib.Path(r["video"]).name for r in records) == ["a.mp4", "b.mkv", "c.mp4", "d.mp4"]
    assert {r["rank"] for r in records} == {0, 1} and all(r["status"] == "ok" for r in records)
    assert not list(out.glob("manifest.rank*.jsonl"))


@pytest.mark.slow
def test_video_benchmark_runs(tmp_path, data_dir):
    """benchmarks/bench_video.py end to end on a tiny workload, in a fresh interpreter."""
    result_file = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_video.py"), "--video", str(data_dir / "realshort.mp4"),
                    "--frames", "4", "--runs", "1", "--folder-videos", "2", "--folder-runs", "1", "--workers", "0", "1",
                    "--json", str(result_file)], check=True, cwd=REPO, capture_output=True, text=True, env=_env(),
                   timeout=300)
    result = json.loads(result_file.read_text())
    assert result["one_clip"]["tokens_shape"] == [4, 144, 64]
    assert result["one_clip"]["max_abs_frame_diff_uint8"] == 0  # both pipelines decode the same frames
    assert result["one_clip"]["max_abs_token_diff"] < 0.05 * result["one_clip"]["token_abs_max"]
    assert set(result["folder"]["results"]) == {"reference", "extract --workers 0", "extract --workers 1"}


def test_backend_decord_is_used_and_recorded(capsys, tmp_path, tiny_model, videos):
    out = tmp_path / "out"
    args = [videos / "a.mp4", "--out", out, "--model", tiny_model, "--num-frames", 5, "--workers", 1]
    code, stdout, stderr = extract(capsys, *args, "--backend", "decord")
    assert code == 0 and "(decord decoding)" in stderr
    got = load_video_tokens(out / "a.safetensors")
    tower = CLIPVisionTower.from_pretrained(tiny_model)
    clip = load_video(videos / "a.mp4", num_frames=5, backend="decord", frame_scale=tower.image_transform.frame_scale())
    expected = spatial_pool(tower(tower.image_transform(clip.frames)), grid=(4, 4), stride=2, mode="average")
    assert got.backend == "decord" and got.indices == clip.indices
    torch.testing.assert_close(got.tokens, expected, rtol=1e-5, atol=1e-6)
    code, stdout, _ = extract(capsys, *args)  # the default backend is a different setting, not "done"
    assert code == 0 and "backend: 'decord' there, 'exact' now" in stdout
    assert load_video_tokens(out / "a.safetensors").backend == "exact"


# ----- integrity: identity, resume, truncation, isolation, one run per folder ----------------------

def test_a_second_folder_with_the_same_names_never_takes_the_first_ones_outputs(capsys, tmp_path, tiny_model):
    """`extract a/` then `extract b/` into one --out, a/clip.mp4 and b/clip.mp4 different videos."""
    for sub, frames in (("a", 12), ("b", 20)):
        (tmp_path / sub).mkdir()
        make_numbered_video(tmp_path / sub / "clip.mp4", frames)
    out = tmp_path / "out"
    common = ["--out", out, "--model", tiny_model, "--num-frames", 2, "--workers", 0]
    assert extract(capsys, tmp_path / "a", *common)[0] == 0
    first = outputs(out)["clip.safetensors"]

    code, stdout, _ = extract(capsys, tmp_path / "b", *common)
    assert code != 0 and "holds the tokens of another video" in stdout and str(tmp_path / "a" / "clip.mp4") in stdout
    assert outputs(out)["clip.safetensors"] == first
    kept = load_video_tokens(out / "clip.safetensors")
    assert kept.path == str(tmp_path / "a" / "clip.mp4") and kept.indices == [0, 11]
    assert manifest(out)[-1]["status"] == "error"

    code, stdout, _ = extract(capsys, tmp_path / "a", tmp_path / "b", *common)  # both in one run
    assert code != 0 and "also that of" in stdout and outputs(out)["clip.safetensors"] == first


def test_a_replaced_video_is_extracted_again(capsys, tmp_path, tiny_model, videos):
    out = tmp_path / "out"
    args = [videos, "--out", out, "--model", tiny_model, "--num-frames", 2, "--workers", 0]
    assert extract(capsys, *args)[0] == 0
    before = outputs(out)
    make_numbered_video(videos / "a.mp4", 30)  # replaced in place by another video
    code, stdout, _ = extract(capsys, *args)
    assert code == 0
    assert "a.mp4: tokens (2, 4, 32) -> a.safetensors (extracted again: the existing output differs: " \
           "source_size:" in stdout and "source_fingerprint:" in stdout
    after = outputs(out)
    assert after["a.safetensors"] != before["a.safetensors"] and after["b.safetensors"] == before["b.safetensors"]
    assert load_video_tokens(out / "a.safetensors").indices == [0, 29]
    status = {pathlib.Path(r["video"]).name: r["status"] for r in manifest(out)[3:]}
    assert status == {"a.mp4": "ok", "b.mkv": "skipped-existing", "c.mp4": "skipped-existing"}


def test_a_changed_dtype_is_extracted_again(capsys, tmp_path, tiny_model, videos):
    out = tmp_path / "out"
    args = [videos / "a.mp4", "--out", out, "--model", tiny_model, "--num-frames", 2, "--workers", 0]
    assert extract(capsys, *args, "--dtype", "float32")[0] == 0
    assert load_video_tokens(out / "a.safetensors").tokens.dtype == torch.float32
    code, stdout, _ = extract(capsys, *args, "--dtype", "bfloat16")
    assert code == 0 and "dtype: 'float32' there, 'bfloat16' now" in stdout
    assert "weights_fingerprint:" not in stdout  # the same weights, whatever dtype they were loaded in
    assert load_video_tokens(out / "a.safetensors").tokens.dtype == torch.bfloat16


def test_a_video_added_to_a_folder_renames_nothing(capsys, tmp_path, tiny_model, videos):
    out = tmp_path / "out"
    args = [videos, "--out", out, "--model", tiny_model, "--num-frames", 2, "--workers", 0]
    assert extract(capsys, *args)[0] == 0
    before = outputs(out)
    make_numbered_video(videos / "c.mkv", 8)  # shares its stem with sub/c.mp4
    code, stdout, _ = extract(capsys, *args)
    assert code == 0
    after = outputs(out)
    assert sorted(after) == ["a.safetensors", "b.safetensors", "c.safetensors", "sub__c.safetensors"]
    assert {k: after[k] for k in before} == before  # none renamed, none rewritten
    assert load_video_tokens(out / "c.safetensors").path == str(videos / "c.mkv")


def test_outputs_record_their_source_and_settings(capsys, tmp_path, tiny_model, videos):
    from video.extract import read_token_header
    from video.provenance import source_fingerprint

    out = tmp_path / "out"
    assert extract(capsys, videos / "a.mp4", "--out", out, "--model", tiny_model, "--num-frames", 2,
                   "--workers", 0)[0] == 0
    meta = read_token_header(out / "a.safetensors").metadata
    stat = (videos / "a.mp4").stat()
    assert meta["source_path"] == str((videos / "a.mp4").resolve()) and meta["source_size"] == stat.st_size
    assert meta["source_mtime_ns"] == stat.st_mtime_ns
    assert meta["source_fingerprint"] == source_fingerprint(videos / "a.mp4")
    assert len(meta["weights_fingerprint"]) == 64 and meta["dtype"] == "float32" and meta["allow_partial"] is False
    assert (meta["layer"], meta["pool_stride"], meta["pool_mode"], meta["num_frames"]) == (-2, 2, "average", 2)


def test_a_truncated_download_is_an_error_unless_partial_is_allowed(capsys, tmp_path, tiny_model, data_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    truncate_file(data_dir / "cup.mp4", folder / "cut.mp4", keep=0.5)  # 94 of 217 frames
    shutil.copy(data_dir / "realshort.mp4", folder / "whole.mp4")
    out = tmp_path / "out"
    args = [folder, "--out", out, "--model", tiny_model, "--num-frames", 4, "--workers", 0]
    code, stdout, _ = extract(capsys, *args)
    assert code != 0 and "declares 217 frames (8.10 s) but only 94 decode" in stdout
    assert sorted(outputs(out)) == ["whole.safetensors"]

    code, stdout, _ = extract(capsys, *args, "--allow-partial")
    assert code == 0 and "PARTIAL" in stdout
    tokens = load_video_tokens(out / "cut.safetensors")
    assert tokens.partial and tokens.declared_frames == 217 and tokens.num_total_frames < 217
    last = {pathlib.Path(r["video"]).name: r for r in manifest(out)[-2:]}
    assert last["cut.mp4"]["status"] == "partial" and last["cut.mp4"]["declared_frames"] == 217
    assert last["whole.mp4"]["status"] == "ok"  # allow_partial is a setting: whole.mp4 redone under it
    assert "allow_partial: False there, True now" in last["whole.mp4"]["reason"]


def _tower_that_runs_out_of_memory(monkeypatch, above: int) -> list[int]:
    """Make the CLI's tower raise torch.OutOfMemoryError for batches of more than `above` frames."""
    import vlm_vision.commands.extract as cli

    real, seen = cli.load_tower, []

    def load(*args, **kwargs):
        tower, label = real(*args, **kwargs)

        def hook(module, inputs):
            seen.append(inputs[0].shape[0])
            if inputs[0].shape[0] > above:
                raise torch.OutOfMemoryError(f"CUDA out of memory (injected: batch of {inputs[0].shape[0]})")

        tower.register_forward_pre_hook(hook)
        return tower, label

    monkeypatch.setattr(cli, "load_tower", load)
    return seen


def test_out_of_memory_retries_with_smaller_batches(capsys, tmp_path, tiny_model, videos, monkeypatch):
    reference = tmp_path / "reference"
    assert extract(capsys, videos, "--out", reference, "--model", tiny_model, "--num-frames", 6,
                   "--workers", 0)[0] == 0
    seen = _tower_that_runs_out_of_memory(monkeypatch, above=2)
    out = tmp_path / "out"
    code, _, _ = extract(capsys, videos, "--out", out, "--model", tiny_model, "--num-frames", 6, "--workers", 0)
    assert code == 0
    assert seen[:4] == [6, 3, 1, 1]  # 6 fails, 3 fails, then batches of 1 (3 // 2)
    for record in manifest(out):
        assert record["status"] == "ok" and record["out_of_memory_retries"] == 2 and record["batch_size"] == 1
        name = record["output"]
        torch.testing.assert_close(load_video_tokens(out / name).tokens, load_video_tokens(reference / name).tokens)


def test_out_of_memory_at_one_frame_fails_that_video_and_the_run_goes_on(capsys, tmp_path, tiny_model, videos,
                                                                          monkeypatch):
    _tower_that_runs_out_of_memory(monkeypatch, above=0)
    out = tmp_path / "out"
    code, stdout, _ = extract(capsys, videos, "--out", out, "--model", tiny_model, "--num-frames", 2, "--workers", 0)
    assert code == 1 and "3 failed" in stdout
    assert [r["status"] for r in manifest(out)] == ["error"] * 3
    assert all(r["reason"].startswith("OutOfMemoryError: CUDA out of memory") for r in manifest(out))
    assert outputs(out) == {}


def test_a_failing_write_fails_that_video_only(capsys, tmp_path, tiny_model, videos, monkeypatch):
    import errno

    import video.corpus.encode as cli

    real = cli.save_video_tokens

    def save(tokens, path, **kwargs):
        if pathlib.Path(path).name == "b.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tokens, path, **kwargs)

    monkeypatch.setattr(cli, "save_video_tokens", save)
    out = tmp_path / "out"
    code, stdout, _ = extract(capsys, videos, "--out", out, "--model", tiny_model, "--num-frames", 2, "--workers", 2)
    assert code == 1
    assert sorted(outputs(out)) == ["a.safetensors", "sub__c.safetensors"]
    status = {pathlib.Path(r["video"]).name: r for r in manifest(out)}
    assert status["b.mkv"]["status"] == "error"
    assert status["b.mkv"]["reason"] == "OSError: [Errno 28] No space left on device"
    assert status["a.mp4"]["status"] == status["c.mp4"]["status"] == "ok"
    monkeypatch.setattr(cli, "save_video_tokens", real)
    assert extract(capsys, videos, "--out", out, "--model", tiny_model, "--num-frames", 2, "--workers", 0)[0] == 0
    assert {pathlib.Path(r["video"]).name: r["status"] for r in manifest(out)[3:]} == {
        "a.mp4": "skipped-existing", "b.mkv": "ok", "c.mp4": "skipped-existing"}


def test_ctrl_c_stops_at_once_with_nothing_half_written(capsys, tmp_path, tiny_model, videos, monkeypatch):
    """KeyboardInterrupt while b's file is being written: the run stops, no temporary file, no lock."""
    real_fsync = os.fsync

    def fsync(fd):
        if ".b.safetensors." in os.readlink(f"/proc/self/fd/{fd}"):
            raise KeyboardInterrupt
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "out"
    assert main(["extract", str(videos), "--out", str(out), "--model", str(tiny_model), "--num-frames", "2",
                 "--workers", "0"]) == 130
    err = capsys.readouterr().err
    assert "vlm-vision extract: interrupted; run the same command again" in err.rstrip().split("\n")[-1]
    assert sorted(p.name for p in out.iterdir()) == ["a.safetensors", "manifest.jsonl"]
    assert [r["status"] for r in manifest(out)] == ["ok"]


def test_two_runs_into_one_folder(tmp_path, tiny_model):
    """A second run into a folder in use stops at once, naming the first; a dead run's lock is taken over."""
    out = tmp_path / "out"
    cmd = _many_videos_command(tmp_path, 6, out, tiny_model, workers=0)
    first = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = out / ".vlm-vision-extract.lock"
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.read_text()) and time.monotonic() < deadline:
        time.sleep(0.01)
    second = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    first_out, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    assert second.returncode == 2, second.stderr
    assert f"in use by another extraction run (pid {first.pid} on host" in second.stderr
    assert len(outputs(out)) == 6 and not lock.exists()
    assert len(manifest(out)) == 6  # the second run wrote nothing

    lock.write_text(json.dumps({"pid": 999999999, "host": "gone", "started": "2026-11-28T00:00:00"}))
    third = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr
    assert "taking over" in third.stderr and "pid 999999999 on host gone" in third.stderr
    assert not lock.exists()


def test_budget_picks_each_videos_stride_like_the_model(tiny_model, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    make_numbered_video(videos / "short.mp4", 12)  # 0.4 s at 30 fps: 4 frames at 10 fps -> 16 tokens fit
    make_numbered_video(videos / "long.mp4", 90)  # 3 s: 30 frames, capped at 8 -> 32 tokens > 20: stride 4
    out = tmp_path / "tokens"
    args = ["extract", str(videos), "--out", str(out), "--model", str(tiny_model), "--fps", "10", "--max-frames", "8",
            "--max-video-tokens", "20", "--workers", "0"]
    assert main(args) == 0
    short, long = load_video_tokens(out / "short.safetensors"), load_video_tokens(out / "long.safetensors")
    assert (tuple(short.tokens.shape), short.pool_stride) == ((4, 4, 32), 2)
    assert (tuple(long.tokens.shape), long.pool_stride) == ((8, 1, 32), 4)

    # a model with the same budget takes both files as they are, and counts them as its processor does
    tower = CLIPVisionTower.from_pretrained(str(tiny_model))
    llm = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                       num_attention_heads=4, num_key_value_heads=2, vocab_size=40))
    model = VisionLanguageModel(tower, build_projector("linear", 32, 64), llm, image_token_id=None,
                                video_token_id=39, max_video_tokens=20)
    got = [v.shape[0] for v in model.video_features(video_features=[short.tokens, long.tokens])]
    assert got == [model.video_tokens(4), model.video_tokens(8)] == [16, 8]

    stamp = (out / "long.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 0  # same settings: both outputs kept, nothing redone
    assert (out / "long.safetensors").stat().st_mtime_ns == stamp


def test_min_frames_that_cannot_fit_stop_the_run(tiny_model, tmp_path, capsys):
    make_numbered_video(tmp_path / "a.mp4", 12)
    code = main(["extract", str(tmp_path / "a.mp4"), "--out", str(tmp_path / "o"), "--model", str(tiny_model),
                 "--fps", "10", "--min-frames", "30", "--max-video-tokens", "20", "--workers", "0"])
    assert code == 2
    assert "min_frames=30 frames need 30 tokens" in capsys.readouterr().err
