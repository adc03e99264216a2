"""`vlm-vision extract` with a frame budget: per-video stride as the model chooses it, resume, clear refusal."""

from __future__ import annotations

from transformers import LlamaConfig, LlamaForCausalLM

from projector import build_projector
from tests.video.synth import make_numbered_video
from tests.vlm_vision.commands.test_extract import tiny_model  # noqa: F401  (a fixture: tiny random CLIP, 4x4 patch grid)
from video import load_video_tokens
from vlm_vision import CLIPVisionTower, VisionLanguageModel
from vlm_vision.commands.main import main


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
