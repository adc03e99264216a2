"""`vlm-vision clip-train`'s flags and input checks: a refused value or a missing input is one line naming its
flag, exit 2, before CLIP loads or anything is written."""

import importlib
import json
import pathlib

import PIL.Image
import pytest

from tests.vlm_vision.tiny_clip import save_tiny_clip
from vlm_vision.commands.main import main


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> dict[str, pathlib.Path]:
    """Two captioned solid-colour PNGs and a tiny random CLIP: valid inputs that one flag at a time spoils."""
    root = tmp_path_factory.mktemp("clip_inputs")
    media = root / "media"
    media.mkdir()
    records = []
    for name, rgb in (("red", (220, 30, 30)), ("blue", (30, 40, 220))):
        PIL.Image.new("RGB", (32, 32), rgb).save(media / f"{name}.png")
        records.append({"image": f"{name}.png", "caption": f"a photo of a {name} square"})
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return {"media": media, "data": root / "pairs.jsonl", "model": save_tiny_clip(root / "clip")}


def test_bad_schedule_settings_are_refused(colours, tmp_path, capsys):
    rc = main(["clip-train", "--model", str(colours["model"]), "--data", str(colours["data"]),
               "--media-root", str(colours["media"]), "--output-dir", str(tmp_path / "x"), "--warmup-ratio", "1.5"])
    assert rc == 2
    assert "bad value (--warmup-ratio 1.5): warmup_ratio must be in [0, 1)" in capsys.readouterr().err


def test_cli_reports_bad_input(colours, tmp_path, capsys):
    args = ["clip-train", "--model", str(colours["model"]), "--media-root", str(colours["media"]),
            "--output-dir", str(tmp_path / "out")]
    assert main([*args, "--data", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    assert main([*args, "--data", str(colours["data"]), "--max-steps", "0"]) == 2
    err = capsys.readouterr().err
    assert "bad value (--max-steps 0): max_steps must be positive" in err and "Traceback" not in err
    assert main([*args, "--data", str(colours["data"]), "--eval-fraction", "1.0"]) == 2
    assert "eval_fraction must be in [0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_every_bad_value_is_named_at_once(colours, tmp_path, capsys):
    assert main(["clip-train", "--model", str(colours["model"]), "--data", str(colours["data"]), "--media-root",
                 str(colours["media"]), "--output-dir", str(tmp_path / "out"), "--batch-size", "0",
                 "--weight-decay", "-1"]) == 2
    err = capsys.readouterr().err
    assert ("bad values (--batch-size 0 --weight-decay -1.0): batch_size must be positive; weight_decay must be >= 0"
            in err)
    assert not (tmp_path / "out").exists()


def test_ctrl_c_keeps_the_checkpoints_and_resume_continues(colours, tmp_path, monkeypatch, capsys):
    """Ctrl-C right after checkpoint-2 (of 3 steps): exit 130, the folder and checkpoint-2 stay, the message
    says how to resume, and --resume trains step 3 only."""
    fit = importlib.import_module("vlm_vision.training.fit")
    original = fit.save_checkpoint

    def save_then_interrupt(accelerator, out, step, *args, **kwargs):
        original(accelerator, out, step, *args, **kwargs)
        if step == 2:
            raise KeyboardInterrupt

    args = ["clip-train", "--model", str(colours["model"]), "--data", str(colours["data"]), "--media-root",
            str(colours["media"]), "--output-dir", str(tmp_path / "out"), "--max-steps", "3", "--batch-size", "2",
            "--eval-fraction", "0", "--save-every", "1", "--keep-last", "1"]
    monkeypatch.setattr(fit, "save_checkpoint", save_then_interrupt)
    assert main(args) == 130
    monkeypatch.undo()
    assert "interrupted; to continue from the last checkpoint-STEP/ (--save-every), run the same command with " \
           "--resume" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["checkpoint-2", "log.jsonl"]
    assert main([*args, "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert [json.loads(line)["step"] for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["steps"] == 3
