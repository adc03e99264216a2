"""Answering questions with a model: a trained model beats chance and an untrained one does not, in
both multiple-choice scoring modes; the LLaVA-NeXT-Video export answers as its training run does;
batch size does not change an answer; token files answer as the videos they come from."""

from __future__ import annotations

import json

import pytest
import torch

from tests.vlm_vision.eval_fixtures import FRAMES, reference_run, trained_colour_model
from vlm_vision.evaluation.questions import parse_question, summarize
from vlm_vision.evaluation.run import read_predictions
from vlm_vision.evaluation.answers import answer_questions
from vlm_vision.evaluation.model import load_eval_model, model_identity


@pytest.fixture(scope="module")
def colour(tmp_path_factory):
    paths = trained_colour_model(tmp_path_factory.getbasetemp() / "eval_colour")
    data = reference_run(paths)  # `vlm-vision eval` with its defaults (batch size 8)
    records = [json.loads(line) for line in data.read_text().splitlines()]
    paths["questions"] = [parse_question(r, paths["media"], source=data.name, index=i) for i, r in enumerate(records)]
    paths["rows"] = read_predictions(paths["reference"] / "predictions.jsonl")
    paths["model"], paths["processor"] = load_eval_model(paths["final"])
    return paths


def _untrained(paths):
    from vlm_vision.model.run_folder import TrainedSpec, build_base
    from vlm_vision.model.llm import load_tokenizer

    spec = TrainedSpec(llm=str(paths["llm"]), tower=str(paths["tower"]), projector_type="mlp2x_gelu", vocab_size=0,
                       new_token_ids=[], image_token_id=None, video_token_id=None, num_frames=FRAMES)
    torch.manual_seed(0)
    model, processor = build_base(spec, tokenizer=load_tokenizer(str(paths["llm"])))
    return model.eval(), processor


def _comparable(rows):
    """Rows without the log-likelihood values (compared with a tolerance instead) and the medium's file
    (a token file or the video it comes from; the frames and token counts must still agree)."""
    return [{k: v for k, v in r.items() if k != "media" and (k != "scores" or r["type"] == "open_ended")}
            for r in rows]


def test_trained_model_is_well_above_chance_and_untrained_is_not(colour):
    trained = summarize(colour["rows"])["overall"]
    model, processor = _untrained(colour)
    untrained = summarize(answer_questions(model, processor, colour["questions"], num_frames=FRAMES))["overall"]
    for mode in ("generated_accuracy", "log_likelihood_accuracy"):
        assert trained["multiple_choice"][mode] >= 0.75, trained
        assert untrained["multiple_choice"][mode] <= 0.5, untrained
    assert trained["multiple_choice"]["chance"] == 0.25
    assert trained["open_ended"]["exact_match"] >= 0.75 and untrained["open_ended"]["exact_match"] == 0.0


def test_the_llava_next_video_export_answers_like_its_training_run(colour, tmp_path):
    from vlm_vision.export.folder import ExportSettings, export_model

    export_model(ExportSettings(run=str(colour["final"]), out=str(tmp_path / "hf")))
    assert model_identity(tmp_path / "hf")["kind"] == "llava_next_video"
    model, processor = load_eval_model(tmp_path / "hf")
    rows = answer_questions(model, processor, colour["questions"], num_frames=FRAMES, batch_size=8)
    assert _comparable(rows) == _comparable(colour["rows"])
    for ours, theirs in zip(rows, colour["rows"]):
        if ours["type"] == "multiple_choice":
            torch.testing.assert_close(ours["scores"]["log_likelihood"], theirs["scores"]["log_likelihood"],
                                       atol=2e-3, rtol=0)


def test_batch_size_does_not_change_an_answer(colour):
    one = answer_questions(colour["model"], colour["processor"], colour["questions"][:8], num_frames=FRAMES,
                           batch_size=1)
    assert _comparable(one) == _comparable(colour["rows"][:8])
    for a, b in zip(one, colour["rows"]):
        if a["type"] == "multiple_choice":
            torch.testing.assert_close(a["scores"]["log_likelihood"], b["scores"]["log_likelihood"], atol=2e-3, rtol=0)


def test_token_files_answer_like_the_videos_they_come_from(colour, tmp_path):
    from video import extract_video_tokens, save_video_tokens

    model = colour["model"]
    questions = colour["questions"][:4]
    records = []
    for q in questions:
        tokens = extract_video_tokens(q.media_path, model.tower, num_frames=FRAMES, pool_stride=model.pool_stride,
                                      pool_mode=model.pool_mode, model="tiny")
        save_video_tokens(tokens, tmp_path / f"{q.id}.safetensors")
        record = {"id": q.id, "video": f"{q.id}.safetensors", "question": q.question, "category": q.category}
        record.update({"options": list(q.options), "answer": q.answer} if q.multiple_choice
                      else {"answer": list(q.references)})
        records.append(parse_question(record, tmp_path, source="held_out.jsonl"))
    rows = answer_questions(model, colour["processor"], records, num_frames=FRAMES)
    assert _comparable(rows) == _comparable(colour["rows"][:4])


def test_image_questions_are_answered_and_unreadable_media_become_error_rows(colour, tmp_path):
    import PIL.Image

    PIL.Image.new("RGB", (40, 30), (30, 40, 220)).save(tmp_path / "blue.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    records = [{"id": "img", "image": "blue.png", "question": "What colour is this video?",
                "options": ["red", "green", "blue", "yellow"], "answer": "C"},
               {"id": "bad-img", "image": "broken.png", "question": "Colour?", "answer": "blue"},
               {"id": "bad-video", "video": "broken.mp4", "question": "Colour?", "answer": "blue"}]
    questions = [parse_question(r, tmp_path) for r in records]
    rows = answer_questions(colour["model"], colour["processor"], questions, num_frames=FRAMES)
    assert "error" not in rows[0] and len(rows[0]["scores"]["log_likelihood"]) == 4
    assert rows[1]["error"].startswith("image could not be read")
    assert rows[2]["error"].startswith("video could not be decoded")
