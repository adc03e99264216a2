"""Question-answering records for evaluation, the prompts built from them, and how answers are scored.

Everything here is pure (no model, no decoding) and hand-tested. `vlm_vision.evaluation.answers` runs the
model on what this module builds and hands the outputs back to be scored.

A record that cannot be evaluated raises `BadRecord` (training's `BadSample`: `sample_id`, and a
`reason` naming the field and what was expected). A record is one JSON object: a medium, a question, and either options with an answer (multiple
choice) or an answer string (open-ended). Benchmarks spell these differently; the spellings taken
are the tables below (the first one present wins):

    id        id, question_id, qid, uid                       (else "#<index in the file>")
    medium    video, video_path, video_file | image, image_path, image_file
              (a video ending in .safetensors is a token file written by `vlm-vision extract`)
    question  question, query, prompt | LLaVA `conversations` (first human turn; its gpt turn is
              the open-ended answer)
    options   options, candidates, choices (a list, or a {"A": text, ...} mapping) | a0, a1, ... |
              option 0, option 1, ... ; a "A. " / "(A) " prefix on every option is removed
    answer    answer, label, correct_answer, gt_answer, truth: for multiple choice the option's
              text, its letter ("B", "(B)", "B. text"), or its 0-based index (3 or "3");
              for open-ended a string, or a list of acceptable strings
    category  category, task_type, question_type, type       (optional)
    window    start, end seconds (optional; the video is sampled inside them)

Prompts (the user turn, rendered with the model's chat template, generation prompt added):
multiple choice asks for a letter with the wording LLaVA's and lmms-eval's multiple-choice tasks
use, so generated-letter scores are comparable with theirs:

    <video>
    {question}
    A. {option 0}
    B. {option 1}
    ...
    Answer with the option's letter from the given choices directly.

The log-likelihood score of an option is the summed log-probability of the assistant turn
`{option text}` (through the template's end-of-turn marker) after the user turn `<video>\\n{question}`;
the highest wins. It needs no instruction following, so it also ranks the options of small or
lightly trained models. Open-ended questions use the user turn `<video>\\n{question}`.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlm_vision.data.formats import CACHED_SUFFIX, PLACEHOLDERS
from vlm_vision.data.formats import BadSample as BadRecord

__all__ = [
    "Question",
    "parse_question",
    "choice_prompt",
    "open_prompt",
    "parse_choice",
    "normalize_answer",
    "exact_match",
    "token_f1",
    "duration_bucket",
    "summarize",
    "log_fields",
]

ID_FIELDS = ("id", "question_id", "qid", "uid")
VIDEO_FIELDS = ("video", "video_path", "video_file")
IMAGE_FIELDS = ("image", "image_path", "image_file")
QUESTION_FIELDS = ("question", "query", "prompt")
OPTION_FIELDS = ("options", "candidates", "choices")
ANSWER_FIELDS = ("answer", "label", "correct_answer", "gt_answer", "truth")
CATEGORY_FIELDS = ("category", "task_type", "question_type", "type")
LETTERS = string.ascii_uppercase
CHOICE_INSTRUCTION = "Answer with the option's letter from the given choices directly."
# Upper bounds (seconds) of the video-length buckets; Video-MME calls < 2 min short and up to 15 min medium.
DURATION_BUCKETS = ((120.0, "short (<2 min)"), (900.0, "medium (2-15 min)"), (math.inf, "long (>15 min)"))
_PREFIX = re.compile(r"^\s*\(?([A-Z])[.):]\s*")


@dataclass(frozen=True)
class Question:
    """One parsed evaluation record; the medium is located, not loaded.

    Attributes:
        id: the record's id (`#<index>` when it has none).
        source: the data file's name, which with `id` keys a prediction.
        media_kind: "video" (a file to decode, or a `.safetensors` token file) or "image".
        media_path: the resolved file.
        question: the question text, placeholders removed.
        options: the options' texts (multiple choice), else None.
        answer: index of the right option (multiple choice), else None.
        references: acceptable answers (open-ended), else None.
        category: the record's category, None when it has none.
        start, end: the window of the video to sample, in seconds.
    """

    id: str
    source: str
    media_kind: str
    media_path: Path
    question: str
    options: tuple[str, ...] | None = None
    answer: int | None = None
    references: tuple[str, ...] | None = None
    category: str | None = None
    start: float | None = None
    end: float | None = None

    @property
    def multiple_choice(self) -> bool:
        return self.options is not None

    @property
    def cached(self) -> bool:
        """True when the video is a token file (pooled tower features), not a video to decode."""
        return self.media_kind == "video" and self.media_path.suffix == CACHED_SUFFIX


# ----- parsing ------------------------------------------------------------------------------------


def _first(raw: Mapping[str, Any], names: Sequence[str]) -> tuple[str | None, Any]:
    for name in names:
        if raw.get(name) is not None:
            return name, raw[name]
    return None, None


def _expected(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _strip_placeholders(text: str) -> str:
    for tag in PLACEHOLDERS.values():
        text = text.replace(tag, "")
    return text.strip()


def _options(raw: Mapping[str, Any], record_id: str) -> tuple[str, ...] | None:
    """The options of a record in order, None when it has none."""
    name, value = _first(raw, OPTION_FIELDS)
    if value is None:
        numbered = [raw.get(f"a{i}", raw.get(f"option {i}", raw.get(f"option_{i}"))) for i in range(len(LETTERS))]
        count = next((i for i, v in enumerate(numbered) if v is None), len(numbered))
        if count == 0:
            return None
        name, value = "a0/option 0", numbered[:count]
    if isinstance(value, Mapping):
        keys = [str(k).strip().upper() for k in value]
        if keys != list(LETTERS[:len(keys)]):
            raise BadRecord(record_id, f"{name!r} as a mapping must have the keys A, B, C, ... in order; got {keys}")
        value = list(value.values())
    if not isinstance(value, list) or len(value) < 2 or not all(isinstance(v, (str, int, float)) for v in value):
        raise BadRecord(record_id, f"{name!r} must be a list of at least 2 option texts, got {value!r}")
    texts = [str(v).strip() for v in value]
    prefixes = [_PREFIX.match(t) for t in texts]
    if all(m is not None and m.group(1) == LETTERS[i] for i, m in enumerate(prefixes)):
        texts = [t[m.end():].strip() for t, m in zip(texts, prefixes)]  # "A. red" -> "red"
    if len(texts) > len(LETTERS):
        raise BadRecord(record_id, f"{len(texts)} options; at most {len(LETTERS)} can be lettered")
    return tuple(texts)


def _answer_index(answer: Any, options: Sequence[str], record_id: str, field: str) -> int:
    """The option an answer names: its text, its letter, or its 0-based index."""
    n = len(options)
    if isinstance(answer, bool) or not isinstance(answer, (int, str)):
        raise BadRecord(record_id, f"{field!r} must be an option's text, letter or index, got {answer!r}")
    if isinstance(answer, int):
        if not 0 <= answer < n:
            raise BadRecord(record_id, f"{field!r} index {answer} is outside the {n} options (0-based)")
        return answer
    text = answer.strip()
    by_text = [i for i, o in enumerate(options) if normalize_answer(o) == normalize_answer(text)]
    if by_text:
        return by_text[0]
    letter = re.fullmatch(r"\(?([A-Z])\)?", text) or _PREFIX.match(text)
    if letter and LETTERS.index(letter.group(1)) < n:
        return LETTERS.index(letter.group(1))
    if text.isdigit() and int(text) < n:
        return int(text)
    raise BadRecord(record_id, f"{field!r} {answer!r} is not one of the options {list(options)}, nor a letter "
                               f"A-{LETTERS[n - 1]}, nor an index 0-{n - 1}")


def _seconds(raw: Mapping[str, Any], name: str, record_id: str) -> float | None:
    value = raw.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise BadRecord(record_id, f"{name!r} must be a number of seconds >= 0, got {value!r}")
    return float(value)


def _conversation(raw: Mapping[str, Any], record_id: str) -> tuple[str | None, str | None]:
    """(first human turn, first gpt turn) of a LLaVA conversation record, or (None, None)."""
    turns = raw.get("conversations")
    if not isinstance(turns, list):
        return None, None
    said = {"human": None, "gpt": None}
    for turn in turns:
        role = turn.get("from") if isinstance(turn, dict) else None
        role = {"user": "human", "assistant": "gpt"}.get(role, role)
        if role in said and said[role] is None and isinstance(turn.get("value"), str):
            said[role] = turn["value"]
    return said["human"], said["gpt"]


def parse_question(raw: Any, media_root: str | Path, *, source: str = "", index: int = 0) -> Question:
    """Check one raw record and turn it into a `Question` (spellings: see the module docstring).

    Args:
        raw: the record as read from JSON.
        media_root: folder relative media paths are resolved against.
        source: the data file's name, recorded with the question.
        index: position in the file, the id of a record without one.

    Raises:
        BadRecord: naming the missing or malformed field and the spellings accepted.

    Example:
        >>> q = parse_question({"video": "a.mp4", "question": "Colour?", "candidates": ["red", "blue"],
        ...                     "answer": "B"}, "media")
        >>> q.options, q.answer
        (('red', 'blue'), 1)
    """
    if not isinstance(raw, dict):
        raise BadRecord(f"#{index}", f"a record must be a JSON object, got {type(raw).__name__}")
    _, record_id = _first(raw, ID_FIELDS)
    record_id = f"#{index}" if record_id is None else str(record_id)

    video_field, video = _first(raw, VIDEO_FIELDS)
    image_field, image = _first(raw, IMAGE_FIELDS)
    if video is not None and image is not None:
        raise BadRecord(record_id, f"has both {video_field!r} and {image_field!r}; one medium per record")
    if video is None and image is None:
        raise BadRecord(record_id, f"no medium: expected one of {_expected(VIDEO_FIELDS + IMAGE_FIELDS)}")
    kind, field, value = ("video", video_field, video) if video is not None else ("image", image_field, image)
    if not isinstance(value, str) or not value:
        raise BadRecord(record_id, f"{field!r} must be a path string, got {value!r}")
    path = Path(value) if Path(value).is_absolute() else Path(media_root) / value
    if not path.is_file():
        raise BadRecord(record_id, f"missing media: {path}")

    human, gpt = _conversation(raw, record_id)
    _, question = _first(raw, QUESTION_FIELDS)
    question = human if question is None else question
    if not isinstance(question, str) or not _strip_placeholders(question):
        raise BadRecord(record_id, f"no question: expected a non-empty string in one of "
                                   f"{_expected(QUESTION_FIELDS)} (or a LLaVA 'conversations' human turn)")
    answer_field, answer = _first(raw, ANSWER_FIELDS)
    if answer is None and gpt is not None:
        answer_field, answer = "conversations", gpt
    if answer is None:
        raise BadRecord(record_id, f"no answer: expected one of {_expected(ANSWER_FIELDS)} "
                                   f"(or a LLaVA 'conversations' gpt turn)")
    options = _options(raw, record_id)
    _, category = _first(raw, CATEGORY_FIELDS)
    start, end = _seconds(raw, "start", record_id), _seconds(raw, "end", record_id)
    if start is not None and end is not None and end <= start:
        raise BadRecord(record_id, f"'end' {end} must be after 'start' {start}")
    common = dict(id=record_id, source=source, media_kind=kind, media_path=path,
                  question=_strip_placeholders(question), category=None if category is None else str(category),
                  start=start, end=end)
    if options is not None:
        return Question(**common, options=options, answer=_answer_index(answer, options, record_id, answer_field))
    references = answer if isinstance(answer, list) else [answer]
    if not references or not all(isinstance(r, (str, int, float)) and not isinstance(r, bool) for r in references):
        raise BadRecord(record_id, f"open-ended {answer_field!r} must be a string or a list of strings, got {answer!r}")
    return Question(**common, references=tuple(str(r) for r in references))


# ----- prompts ------------------------------------------------------------------------------------


def choice_prompt(question: Question) -> str:
    """The user turn asking for an option's letter (the template in the module docstring)."""
    lines = [PLACEHOLDERS[question.media_kind], question.question]
    lines += [f"{LETTERS[i]}. {text}" for i, text in enumerate(question.options or ())]
    return "\n".join(lines + [CHOICE_INSTRUCTION])


def open_prompt(question: Question) -> str:
    """The user turn of an open-ended question, and the context options are scored after."""
    return f"{PLACEHOLDERS[question.media_kind]}\n{question.question}"


# ----- scoring ------------------------------------------------------------------------------------


def parse_choice(text: str, options: Sequence[str]) -> int | None:
    """The option a generated answer picks, or None when it names none.

    Taken, in order: a leading letter ("B", "(B)", "B.", "B) red"), a letter after "answer"/"option"
    ("The answer is (B)"), the text of exactly one option. A letter past the last option is no pick.

    Example:
        >>> parse_choice("(B) blue", ["red", "blue"]), parse_choice("A video of", ["red", "blue"])
        (1, None)
    """
    n = len(options)
    text = text.strip()
    found = re.match(r"\(?([A-Z])\)?(?:[.):,]|$)", text) or \
        re.search(r"(?i:answer|option)(?:\s+is)?\s*:?\s*\(?([A-Z])\)?(?![A-Za-z])", text)
    if found:
        index = LETTERS.index(found.group(1))
        return index if index < n else None
    same = [i for i, o in enumerate(options) if normalize_answer(o) == normalize_answer(text)]
    return same[0] if len(same) == 1 else None


def normalize_answer(text: str) -> str:
    """Lower case, punctuation and the articles a/an/the removed, whitespace collapsed (SQuAD's rule).

    Example:
        >>> normalize_answer("The  Red car!")
        'red car'
    """
    text = "".join(c for c in text.lower() if c not in string.punctuation)
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def exact_match(prediction: str, references: Iterable[str]) -> bool:
    """True when the normalised prediction equals a normalised reference."""
    return any(normalize_answer(prediction) == normalize_answer(r) for r in references)


def token_f1(prediction: str, references: Iterable[str]) -> float:
    """Best F1 over references of the bags of normalised words (0 when either side is empty, unless both are).

    Example:
        >>> token_f1("red car", ["a red bus"])  # 1 common word of 2 and 2: P = R = 1/2
        0.5
    """
    best = 0.0
    words = normalize_answer(prediction).split()
    for reference in references:
        ref = normalize_answer(reference).split()
        if not words or not ref:
            best = max(best, float(words == ref))
            continue
        common = sum((Counter(words) & Counter(ref)).values())
        if common:
            precision, recall = common / len(words), common / len(ref)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def duration_bucket(seconds: float | None) -> str:
    """The length bucket of a video ("unknown" for images and unknown lengths).

    Example:
        >>> duration_bucket(30.0), duration_bucket(600.0), duration_bucket(None)
        ('short (<2 min)', 'medium (2-15 min)', 'unknown')
    """
    if seconds is None:
        return "unknown"
    return next(name for bound, name in DURATION_BUCKETS if seconds < bound)


# ----- metrics ------------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _group(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy figures of scored prediction rows (see `vlm_vision.evaluation.answers` for the row layout)."""
    choice = [r for r in rows if r["type"] == "multiple_choice"]
    open_ended = [r for r in rows if r["type"] == "open_ended"]
    out: dict[str, Any] = {"questions": len(rows)}
    if choice:
        out["multiple_choice"] = {
            "questions": len(choice),
            "generated_accuracy": _mean([float(r["correct"]["generated"]) for r in choice]),
            "log_likelihood_accuracy": _mean([float(r["correct"]["log_likelihood"]) for r in choice]),
            "unparsed_generations": sum(r["prediction"]["generated_choice"] is None for r in choice),
            "chance": _mean([1 / len(r["options"]) for r in choice]),
        }
    if open_ended:
        out["open_ended"] = {
            "questions": len(open_ended),
            "exact_match": _mean([float(r["scores"]["exact_match"]) for r in open_ended]),
            "token_f1": _mean([r["scores"]["token_f1"] for r in open_ended]),
        }
    return out


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Overall, per-category and per-duration figures of prediction rows, and the failed ones.

    Rows with an `error` (undecodable media) are counted and listed, never scored.
    """
    scored = [r for r in rows if "error" not in r]
    failed = [{"id": r["id"], "source": r["source"], "reason": r["error"]} for r in rows if "error" in r]
    by_category: dict[str, list] = {}
    by_duration: dict[str, list] = {}
    for r in scored:
        by_category.setdefault(r.get("category") or "uncategorized", []).append(r)
        by_duration.setdefault(duration_bucket(r.get("duration")), []).append(r)
    order = [name for _, name in DURATION_BUCKETS] + ["unknown"]
    return {
        "overall": _group(scored),
        "per_category": {name: _group(group) for name, group in sorted(by_category.items())},
        "per_duration": {name: _group(by_duration[name]) for name in order if name in by_duration},
        "undecodable": failed,
    }


def log_fields(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The overall figures of prediction rows as flat training-log fields.

    Example:
        >>> log_fields([{"type": "open_ended", "scores": {"exact_match": 1.0, "token_f1": 1.0}}])
        {'eval_questions': 1, 'eval_exact_match': 1.0, 'eval_token_f1': 1.0}
    """
    overall = _group([r for r in rows if "error" not in r])
    out: dict[str, float] = {"eval_questions": overall["questions"]}
    if "multiple_choice" in overall:
        mc = overall["multiple_choice"]
        out["eval_mc_generated_accuracy"] = mc["generated_accuracy"]
        out["eval_mc_log_likelihood_accuracy"] = mc["log_likelihood_accuracy"]
    if "open_ended" in overall:
        out["eval_exact_match"] = overall["open_ended"]["exact_match"]
        out["eval_token_f1"] = overall["open_ended"]["token_f1"]
    return out
