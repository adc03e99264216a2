"""Evaluation records, prompts and scores: pure functions with hand-written expectations."""

from __future__ import annotations

import pytest

from vlm_vision.data.formats import BadSample as BadRecord
from vlm_vision.evaluation.questions import Question, choice_prompt, duration_bucket, exact_match, normalize_answer, open_prompt, parse_choice, parse_question, summarize, token_f1

OPTIONS = ["red", "green", "blue", "yellow"]


@pytest.fixture
def media(tmp_path):
    for name in ("clip.mp4", "frame.png", "clip.safetensors"):
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


@pytest.mark.parametrize("record", [
    {"id": "q1", "video": "clip.mp4", "question": "Colour?", "options": OPTIONS, "answer": "C"},
    {"question_id": "q1", "video_path": "clip.mp4", "query": "Colour?", "candidates": OPTIONS, "answer": "blue"},
    {"qid": "q1", "video_file": "clip.mp4", "prompt": "<video>\nColour?", "choices": OPTIONS, "label": 2},
    {"uid": "q1", "video": "clip.mp4", "question": "Colour?", "options": OPTIONS, "correct_answer": "2"},
    {"id": "q1", "video": "clip.mp4", "question": "Colour?", "a0": "red", "a1": "green", "a2": "blue", "a3": "yellow",
     "answer": 2},
    {"id": "q1", "video": "clip.mp4", "question": "Colour?", "option 0": "red", "option 1": "green",
     "option 2": "blue", "option 3": "yellow", "truth": 2},
    {"id": "q1", "video": "clip.mp4", "question": "Colour?", "options": ["A. red", "B. green", "C. blue", "D. yellow"],
     "gt_answer": "(C)"},
    {"id": "q1", "video": "clip.mp4", "question": "Colour?",
     "options": {"A": "red", "B": "green", "C": "blue", "D": "yellow"}, "answer": "C. blue"},
])
def test_multiple_choice_spellings_parse_to_the_same_question(media, record):
    q = parse_question(record, media, source="f.jsonl")
    assert (q.id, q.source, q.media_kind, q.media_path) == ("q1", "f.jsonl", "video", media / "clip.mp4")
    assert (q.question, q.options, q.answer, q.references) == ("Colour?", tuple(OPTIONS), 2, None)
    assert q.multiple_choice and not q.cached


def test_optional_fields_open_ended_images_token_files_and_conversations(media):
    q = parse_question({"video": "clip.safetensors", "question": "What?", "answer": ["a cat", "cat"],
                        "task_type": "Action", "start": 1, "end": 2.5}, media, index=7)
    assert (q.id, q.references, q.category, q.start, q.end, q.cached) == ("#7", ("a cat", "cat"), "Action", 1.0, 2.5,
                                                                            True)
    q = parse_question({"image_path": "frame.png", "question": "What?", "answer": 3, "category": "count"}, media)
    assert (q.media_kind, q.references, q.category, q.multiple_choice) == ("image", ("3",), "count", False)
    q = parse_question({"id": 5, "video": "clip.mp4", "conversations": [
        {"from": "human", "value": "<video>\nWhat colour?"}, {"from": "gpt", "value": "red"}]}, media)
    assert (q.id, q.question, q.references) == ("5", "What colour?", ("red",))


@pytest.mark.parametrize("record, message", [
    ({"question": "Q?", "answer": "a"}, "no medium: expected one of 'video', 'video_path'"),
    ({"video": "clip.mp4", "image": "frame.png", "question": "Q?", "answer": "a"}, "one medium per record"),
    ({"video": "gone.mp4", "question": "Q?", "answer": "a"}, "missing media"),
    ({"video": "clip.mp4", "answer": "a"}, "no question: expected a non-empty string in one of 'question', 'query'"),
    ({"video": "clip.mp4", "question": "Q?"}, "no answer: expected one of 'answer', 'label'"),
    ({"video": "clip.mp4", "question": "Q?", "options": OPTIONS, "answer": "purple"}, "is not one of the options"),
    ({"video": "clip.mp4", "question": "Q?", "options": OPTIONS, "answer": 4}, "index 4 is outside the 4 options"),
    ({"video": "clip.mp4", "question": "Q?", "options": ["only"], "answer": 0}, "at least 2 option texts"),
    ({"video": "clip.mp4", "question": "Q?", "options": {"B": "x", "A": "y"}, "answer": 0}, "keys A, B, C"),
    ({"video": "clip.mp4", "question": "Q?", "answer": "a", "start": 3, "end": 2}, "'end' 2.0 must be after"),
    ({"video": "clip.mp4", "question": "Q?", "answer": "a", "start": "soon"}, "'start' must be a number"),
    (["not", "an", "object"], "must be a JSON object"),
])
def test_bad_records_name_the_field_and_what_was_expected(media, record, message):
    with pytest.raises(BadRecord, match=message):
        parse_question(record, media)


def test_prompts_are_the_documented_templates():
    q = Question(id="1", source="", media_kind="video", media_path=None, question="What colour?",
                 options=("red", "blue"), answer=0)
    assert choice_prompt(q) == ("<video>\nWhat colour?\nA. red\nB. blue\n"
                                "Answer with the option's letter from the given choices directly.")
    assert open_prompt(q) == "<video>\nWhat colour?"


@pytest.mark.parametrize("text, expected", [
    ("B", 1), (" (B) blue", 1), ("B.", 1), ("B) blue", 1), ("The answer is C", 2), ("Option: (A)", 0),
    ("blue", 1), ("Blue.", 1), ("E", None), ("A video of a dog", None), ("purple", None), ("", None),
])
def test_parse_choice(text, expected):
    assert parse_choice(text, ["red", "blue", "green"]) == expected


def test_normalisation_exact_match_and_token_f1():
    assert normalize_answer("The  Red, car!") == "red car"
    assert exact_match("A red car.", ["red car"]) and not exact_match("red", ["red car"])
    assert token_f1("red car", ["a red bus"]) == 0.5  # 1 common of 2 and 2 words
    assert token_f1("red red car", ["red car", "blue"]) == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert token_f1("", ["the"]) == 1.0 and token_f1("x", ["y"]) == 0.0


def test_duration_buckets():
    assert [duration_bucket(s) for s in (0.5, 119.9, 120, 899, 900, None)] == [
        "short (<2 min)", "short (<2 min)", "medium (2-15 min)", "medium (2-15 min)", "long (>15 min)", "unknown"]


def test_summarize_counts_and_averages_by_category_and_duration():
    def mc(category, generated, likelihood, picked="A", duration=10.0):
        return {"id": "x", "source": "f", "type": "multiple_choice", "category": category, "duration": duration,
                "options": ["a", "b", "c", "d"], "prediction": {"generated_choice": picked},
                "correct": {"generated": generated, "log_likelihood": likelihood}}

    rows = [mc("color", True, True), mc("color", False, True, picked=None), mc(None, False, False, duration=600),
            {"id": "o", "source": "f", "type": "open_ended", "category": "color", "duration": None,
             "scores": {"exact_match": 1.0, "token_f1": 1.0}},
            {"id": "e", "source": "f", "category": "color", "duration": None, "error": "video could not be decoded"}]
    out = summarize(rows)
    assert out["overall"]["questions"] == 4
    assert out["overall"]["multiple_choice"] == {"questions": 3, "generated_accuracy": 1 / 3,
                                                 "log_likelihood_accuracy": 2 / 3, "unparsed_generations": 1,
                                                 "chance": 0.25}
    assert out["overall"]["open_ended"] == {"questions": 1, "exact_match": 1.0, "token_f1": 1.0}
    assert out["per_category"]["color"]["multiple_choice"]["generated_accuracy"] == 0.5
    assert out["per_category"]["uncategorized"]["questions"] == 1
    assert list(out["per_duration"]) == ["short (<2 min)", "medium (2-15 min)", "unknown"]
    assert out["undecodable"] == [{"id": "e", "source": "f", "reason": "video could not be decoded"}]
