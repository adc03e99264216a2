"""clip-train: held-out recall rises on a learnable pairing; LiT keeps the image tower; bad samples are counted."""

import json
import math
import pathlib

import pytest
import torch
from transformers import CLIPModel

from tests.vlm_vision.tiny_clip import save_tiny_clip, write_colour_squares
from vlm_vision.commands.main import main
from vlm_vision.training.clip import ClipTrainConfig, config_problems, retrieval_metrics, train
from vlm_vision.model.zero_shot import ZeroShotClassifier

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30),
           "white": (245, 245, 245), "black": (10, 10, 10), "cyan": (30, 220, 220), "magenta": (220, 30, 220)}


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> dict[str, pathlib.Path]:
    """48 noisy solid-colour PNGs captioned with their colour, and a tiny random CLIP."""
    root = tmp_path_factory.mktemp("colours")
    media = root / "media"
    records = write_colour_squares(media, COLOURS, per_colour=6)
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return {"root": root, "media": media, "data": root / "pairs.jsonl", "model": save_tiny_clip(root / "clip")}


def _train(colours, out: pathlib.Path, *extra: str, steps: int = 40) -> dict:
    rc = main(["clip-train", "--model", str(colours["model"]), "--data", str(colours["data"]),
               "--media-root", str(colours["media"]), "--output-dir", str(out), "--max-steps", str(steps),
               "--batch-size", "16", "--lr", "1e-3", "--eval-fraction", "0.25", "--seed", "0", *extra])
    assert rc == 0
    return json.loads((out / "metrics.json").read_text())


def _mean_r1(m: dict) -> float:
    return (m["image_to_text_recall@1"] + m["text_to_image_recall@1"]) / 2


def test_fine_tuning_raises_held_out_recall_and_saves_a_loadable_model(colours, tmp_path):
    metrics = _train(colours, tmp_path / "out")
    assert metrics["num_train"] == 36 and metrics["num_eval"] == 12 and metrics["steps"] == 40
    before, after = _mean_r1(metrics["before"]), _mean_r1(metrics["after"])
    assert after >= 0.75 and after >= before + 0.3, (before, after)
    assert metrics["final_loss"] < metrics["first_loss"]

    # the output folder is a zero-shot classifier that now knows the colours
    clf = ZeroShotClassifier.from_pretrained(tmp_path / "out")
    assert clf.model.logit_scale.exp().item() == pytest.approx(metrics["logit_scale"], rel=1e-5)
    names = list(COLOURS)
    images = [colours["media"] / f"{name}5.png" for name in names]
    predicted = clf.classify(images, names, templates=["a photo of a {} square"]).argmax(-1)
    assert (predicted == torch.arange(len(names))).float().mean() >= 0.75


def test_locked_image_tower_is_bit_identical_and_the_text_tower_learns(colours, tmp_path):
    metrics = _train(colours, tmp_path / "lit", "--lock-image-tower", steps=20)
    assert _mean_r1(metrics["after"]) > _mean_r1(metrics["before"])
    original = CLIPModel.from_pretrained(colours["model"]).state_dict()
    tuned = CLIPModel.from_pretrained(tmp_path / "lit").state_dict()
    image_keys = [k for k in original if k.startswith(("vision_model.", "visual_projection."))]
    text_keys = [k for k in original if k.startswith(("text_model.", "text_projection."))]
    assert image_keys and text_keys
    assert all(torch.equal(original[k], tuned[k]) for k in image_keys)
    assert not all(torch.equal(original[k], tuned[k]) for k in text_keys)
    assert not torch.equal(original["text_projection.weight"], tuned["text_projection.weight"])


def _log(out: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_cosine_schedule_with_warmup_and_constant(colours, tmp_path):
    _train(colours, tmp_path / "cos", "--warmup-ratio", "0.2", "--eval-fraction", "0", steps=10)
    log = _log(tmp_path / "cos")
    assert [r["step"] for r in log] == list(range(1, 11))
    lrs = [r["lr"] for r in log]
    # 2 warmup steps at 1/3 and 2/3 of the peak, then cosine over the 8 others: 1, 0.96, ..., 0.04
    expected = [1 / 3, 2 / 3] + [0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert lrs == pytest.approx([1e-3 * f for f in expected], rel=1e-6)
    assert all(math.isfinite(r["loss"]) and r["logit_scale"] > 0 for r in log)
    _train(colours, tmp_path / "const", "--lr-schedule", "constant", "--eval-fraction", "0", steps=3)
    assert [r["lr"] for r in _log(tmp_path / "const")] == [1e-3] * 3


def test_bf16_mixed_precision_trains_float32_weights(colours, tmp_path):
    full = _train(colours, tmp_path / "fp32", "--eval-fraction", "0", steps=2)
    mixed = _train(colours, tmp_path / "bf16", "--mixed-precision", "bf16", "--eval-fraction", "0", steps=2)
    # autocast really ran (bfloat16 matmuls move the loss), and the loss is still the same loss
    assert mixed["first_loss"] != full["first_loss"]
    assert mixed["first_loss"] == pytest.approx(full["first_loss"], rel=0.02)
    saved = CLIPModel.from_pretrained(tmp_path / "bf16").state_dict()
    assert {v.dtype for v in saved.values() if v.is_floating_point()} == {torch.float32}


def _bad_sample_lines(tmp_path: pathlib.Path) -> list[str]:
    """6 good pairs, then 6 bad ones: a missing file, a corrupt image and video, no caption, two kinds, bad JSON."""
    (tmp_path / "corrupt.png").write_bytes(b"not a png")
    (tmp_path / "corrupt.mp4").write_bytes(b"not a video")
    lines = [json.dumps({"image": f"{name}{k}.png", "caption": f"a {name} square"})
             for name in ("red", "blue") for k in range(3)]
    lines += [
        json.dumps({"image": "nowhere.png", "caption": "a missing file"}),
        json.dumps({"image": str(tmp_path / "corrupt.png"), "caption": "a corrupt file"}),
        json.dumps({"video": str(tmp_path / "corrupt.mp4"), "caption": "a corrupt video"}),
        json.dumps({"image": "red0.png"}),
        json.dumps({"image": "red0.png", "video": "red0.png", "caption": "both kinds"}),
        "{not json",
    ]
    return lines


def test_bad_samples_are_skipped_and_counted(colours, tmp_path):
    (tmp_path / "pairs.jsonl").write_text("\n".join(_bad_sample_lines(tmp_path)) + "\n")
    rc = main(["clip-train", "--model", str(colours["model"]), "--data", str(tmp_path / "pairs.jsonl"),
               "--media-root", str(colours["media"]), "--output-dir", str(tmp_path / "out"), "--max-steps", "3",
               "--batch-size", "4", "--lr", "1e-4", "--eval-fraction", "0", "--max-skip-fraction", "0.5"])
    assert rc == 0  # 6 of 12 skipped: exactly the ceiling, not past it
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["skipped"] == 6 and metrics["steps"] == 3
    assert metrics["before"] is None and metrics["after"] is None
    reasons = "\n".join(metrics["skipped_reasons"])
    for expected in ("nowhere.png", "corrupt.png", "corrupt.mp4", "caption must be", "exactly one of", "invalid JSON"):
        assert expected in reasons


def test_mostly_bad_data_stops_the_run(colours, tmp_path, capsys):
    # The same 6 bad of 12 with the default ceiling (5%): an error naming the count and the reasons, no model.
    (tmp_path / "pairs.jsonl").write_text("\n".join(_bad_sample_lines(tmp_path)) + "\n")
    rc = main(["clip-train", "--model", str(colours["model"]), "--data", str(tmp_path / "pairs.jsonl"),
               "--media-root", str(colours["media"]), "--output-dir", str(tmp_path / "out"), "--max-steps", "3",
               "--batch-size", "4", "--eval-fraction", "0"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "of 12 samples" in err and "max_skip_fraction=0.05" in err and "--max-skip-fraction" in err
    assert not (tmp_path / "out" / "metrics.json").exists() and not (tmp_path / "out" / "config.json").exists()


def test_undecodable_media_during_training_stop_the_run(colours, tmp_path, capsys):
    # Every record reads fine; 2 of 12 images do not decode (17% > 10%): the loop stops once it has met them.
    for k in range(2):
        (tmp_path / f"broken{k}.png").write_bytes(b"\x89PNG but not really")
    lines = [json.dumps({"image": str(colours["media"] / f"red{k}.png"), "caption": "red"}) for k in range(6)]
    lines += [json.dumps({"image": str(colours["media"] / f"blue{k}.png"), "caption": "blue"}) for k in range(4)]
    lines += [json.dumps({"image": str(tmp_path / f"broken{k}.png"), "caption": "broken"}) for k in range(2)]
    (tmp_path / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    args = ["clip-train", "--model", str(colours["model"]), "--data", str(tmp_path / "pairs.jsonl"),
            "--media-root", str(colours["media"]), "--max-steps", "6", "--batch-size", "4", "--eval-fraction", "0"]
    assert main([*args, "--output-dir", str(tmp_path / "stop"), "--max-skip-fraction", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "2 of 12 samples" in err and "by decoding during training" in err and "image cannot be decoded (2)" in err
    assert main([*args, "--output-dir", str(tmp_path / "go"), "--max-skip-fraction", "0.2"]) == 0
    assert json.loads((tmp_path / "go" / "metrics.json").read_text())["skipped"] == 2


def test_video_text_pairs_train(colours, tmp_path):
    from tests.video.synth import make_numbered_video

    for i in range(4):
        make_numbered_video(tmp_path / f"clip{i}.mp4", num_frames=12 + i)
    records = [{"video": f"clip{i}.mp4", "caption": f"the {name} dog"}
               for i, name in enumerate(["red", "green", "blue", "cyan"])]
    records += [{"image": str(colours["media"] / "red0.png"), "caption": "a red square"}]  # absolute path
    (tmp_path / "pairs.json").write_text(json.dumps(records))
    rc = main(["clip-train", "--model", str(colours["model"]), "--data", str(tmp_path / "pairs.json"),
               "--media-root", str(tmp_path), "--output-dir", str(tmp_path / "out"), "--max-steps", "2",
               "--batch-size", "3", "--num-frames", "4", "--eval-fraction", "0.4"])
    assert rc == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["skipped"] == 0 and metrics["num_eval"] == 2 and metrics["after"]["num_pairs"] == 2


def test_unusable_settings_are_named_by_field(colours, tmp_path):
    config = ClipTrainConfig(str(colours["model"]), colours["data"], colours["media"], tmp_path / "out", max_steps=0,
                             warmup_ratio=1.5, lr_schedule="linear")
    assert config_problems(config) == {"max_steps": "positive", "lr_schedule": "'cosine' or 'constant'",
                                       "warmup_ratio": "in [0, 1)"}
    with pytest.raises(ValueError, match=r"max_steps must be positive, got 0; lr_schedule .* warmup_ratio"):
        train(config)
    assert not (tmp_path / "out").exists()
    assert config_problems(ClipTrainConfig(str(colours["model"]), colours["data"], colours["media"], tmp_path)) == {}


def test_retrieval_metrics_by_hand():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    texts = torch.tensor([[1.0, 0.1], [1.0, 0.0], [0.7, 0.7]])
    # cosines (rows images, columns texts):  [[.995, 1.0, .707], [.0995, 0, .707], [.774, .707, 1.0]]
    # image->text ranks: 1 (text 1 beats text 0), 2 (texts 0 and 2 beat text 1), 0  -> R@1 1/3, R@2 2/3
    # text->image ranks: 0, 2 (images 0 and 2 beat image 1), 0                      -> R@1 2/3, R@3 1
    m = retrieval_metrics(images, texts, ks=(1, 2, 3))
    assert m["image_to_text_recall@1"] == pytest.approx(1 / 3)
    assert m["image_to_text_recall@2"] == pytest.approx(2 / 3)
    assert m["image_to_text_recall@3"] == pytest.approx(1.0)
    assert m["text_to_image_recall@1"] == pytest.approx(2 / 3)
    assert m["text_to_image_recall@2"] == pytest.approx(2 / 3)
    assert m["text_to_image_recall@3"] == pytest.approx(1.0)
    # pairs 1 and 2 share a caption, so they are right answers for each other: image 1 now finds
    # text 2 first (rank 0); text 1 finds image 2 (.707) behind only image 0 (rank 1)
    same = retrieval_metrics(images, texts, captions=["x", "y", "y"], ks=(1, 2))
    assert same["image_to_text_recall@1"] == pytest.approx(2 / 3)
    assert same["text_to_image_recall@1"] == pytest.approx(2 / 3)
    assert same["text_to_image_recall@2"] == pytest.approx(1.0)
    # ties count against: a model that scores everything equally retrieves nothing at R@1
    flat = retrieval_metrics(torch.ones(4, 2), torch.ones(4, 2), ks=(1, 4))
    assert flat["image_to_text_recall@1"] == 0.0 and flat["image_to_text_recall@4"] == 1.0
    with pytest.raises(ValueError, match="3 images, 2 texts"):
        retrieval_metrics(images, texts[:2])


@pytest.mark.slow
def test_two_processes_train_like_one_process_on_the_global_batch(colours, tmp_path):
    """torchrun with 2 CPU processes of batch 4 == one process of batch 8, after an AdamW step."""
    import os
    import subprocess
    import sys

    args = ["clip-train", "--model", str(colours["model"]), "--data", str(colours["data"]),
            "--media-root", str(colours["media"]), "--max-steps", "1", "--lr", "1e-3", "--eval-fraction", "0.25"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "vlm_vision.commands.main", *args, "--batch-size", "4", "--output-dir", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert main([*args, "--batch-size", "8", "--output-dir", str(tmp_path / "one")]) == 0

    one_metrics = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two_metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two_metrics["first_loss"] == pytest.approx(one_metrics["first_loss"], rel=1e-5)
    one = CLIPModel.from_pretrained(tmp_path / "one").state_dict()
    two = CLIPModel.from_pretrained(tmp_path / "two").state_dict()
    start = CLIPModel.from_pretrained(colours["model"]).state_dict()
    assert not torch.equal(one["text_projection.weight"], start["text_projection.weight"])  # it did train
    # Adam's first step is about lr * sign(grad): the same update to float precision (measured: 1.5e-8).
    # Not the key biases: their true gradient is 0 (softmax ignores a constant shift), and Adam
    # blows their rounding noise up to a step of any size up to lr.
    for key in one:
        if not key.endswith("k_proj.bias"):
            torch.testing.assert_close(two[key], one[key], atol=1e-6, rtol=0, msg=key)
