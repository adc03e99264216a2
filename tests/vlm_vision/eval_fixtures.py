"""A model trained to answer the colour task's questions, and held-out questions to evaluate it on.

Training data: each colour video is asked twice, as a multiple-choice question in the exact prompt
`vlm-vision eval` uses (answer: the letter) and as the open question (answer: the colour), so the
trained model can be scored both ways. Held-out questions are about videos it never saw.

`trained_colour_model` trains once per test session (reporting accuracy on the held-out questions
at steps 15 and 30, `eval_accuracy`) (a few seconds) and caches the run under the
session's temporary folder, so every test module that needs it shares the one run.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.vlm_vision.train_fixtures import (
    COLOURS,
    write_colour_video,
    write_llm_folder,
    write_tower_folder,
)
from vlm_vision.evaluation.questions import Question, choice_prompt, open_prompt

FRAMES = 4
NAMES = list(COLOURS)
COLOUR_QUESTION = "What colour is this video?"


def _question(rel: str) -> Question:
    return Question(id="", source="", media_kind="video", media_path=Path(rel), question=COLOUR_QUESTION,
                    options=tuple(NAMES), answer=0)


def write_training_data(root: Path, n: int = 16) -> Path:
    """`n` colour videos, each asked as multiple choice (letter answer) and openly (colour answer)."""
    (root / "videos").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        colour = NAMES[i % len(NAMES)]
        rel = f"videos/train_{colour}_{i}.mp4"
        write_colour_video(root / rel, COLOURS[colour], frames=FRAMES, seed=i)
        q = _question(rel)
        letter = "ABCD"[NAMES.index(colour)]
        for tag, human, gpt in (("mc", choice_prompt(q), letter), ("open", open_prompt(q), colour)):
            lines.append({"id": f"{tag}{i}", "video": rel, "conversations": [{"from": "human", "value": human},
                                                                             {"from": "gpt", "value": gpt}]})
    path = root / "train.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def write_held_out(root: Path, n: int = 8, seed: int = 100) -> list[Path]:
    """`n` new colour videos (colours in turn), under root/held_out/."""
    (root / "held_out").mkdir(parents=True, exist_ok=True)
    return [write_colour_video(root / "held_out" / f"{NAMES[i % 4]}_{i}.mp4", COLOURS[NAMES[i % 4]], frames=FRAMES,
                               seed=seed + i) for i in range(n)]


def held_out_records(videos: list[Path], root: Path) -> list[dict]:
    """Multiple-choice records about `videos` (answer as the option's text), then open-ended ones."""
    out = []
    for i, video in enumerate(videos):
        colour = video.stem.split("_")[0]
        rel = str(video.relative_to(root))
        out.append({"id": f"mc{i}", "video": rel, "question": COLOUR_QUESTION, "options": NAMES, "answer": colour,
                    "category": "colour"})
        out.append({"id": f"open{i}", "video": rel, "question": COLOUR_QUESTION, "answer": colour,
                    "category": "colour (open)"})
    return out


def held_out_conversations(records: list[dict]) -> list[dict]:
    """`held_out_records` that also carry the conversation `vlm-vision train --eval-data` computes its
    eval loss on: the questions are unchanged, so the training log's accuracy can be compared with
    `vlm-vision eval`'s."""
    out = []
    for r in records:
        q = _question(r["video"])
        if "options" in r:
            turns = (choice_prompt(q), "ABCD"[NAMES.index(r["answer"])])
        else:
            turns = (open_prompt(q), r["answer"])
        out.append({**r, "conversations": [{"from": "human", "value": turns[0]}, {"from": "gpt", "value": turns[1]}]})
    return out


def trained_colour_model(base: Path) -> dict[str, Path]:
    """Train (once per `base` folder) and return the paths: llm, tower, media root, final/."""
    from vlm_vision import TrainConfig, train

    paths = {"llm": base / "llm", "tower": base / "tower", "media": base / "media", "final": base / "run" / "final"}
    if paths["final"].is_dir():
        return paths
    write_llm_folder(paths["llm"])
    write_tower_folder(paths["tower"])
    data = write_training_data(paths["media"])
    videos = write_held_out(paths["media"])
    eval_data = paths["media"] / "held_out_conversations.jsonl"
    records = held_out_conversations(held_out_records(videos, paths["media"]))
    eval_data.write_text("".join(json.dumps(r) + "\n" for r in records))
    train(TrainConfig(llm=str(paths["llm"]), tower=str(paths["tower"]), data=str(data), output_dir=str(base / "run"),
                      stage=2, max_steps=30, batch_size=4, lr=1e-2, projector_lr=1e-2, num_frames=FRAMES,
                      max_length=256, lora_r=8, lora_alpha=16, warmup_ratio=0.0, progress=False, seed=0,
                      eval_data=str(eval_data), eval_every=15, eval_accuracy=True))
    return paths


def reference_run(paths: dict[str, Path]) -> Path:
    """`vlm-vision eval` of `trained_colour_model` on every held-out question, run once per base folder.

    Returns the data file; `paths["reference"]` is set to the output folder.
    """
    from vlm_vision.evaluation.run import EvalConfig, run_eval

    data = paths["media"] / "held_out.jsonl"
    out = paths["final"].parents[1] / "reference"
    paths["reference"] = out
    if not (out / "metrics.json").is_file():
        videos = sorted((paths["media"] / "held_out").glob("*.mp4"))
        data.write_text("".join(json.dumps(r) + "\n" for r in held_out_records(videos, paths["media"])))
        run_eval(EvalConfig(model=str(paths["final"]), data=[str(data)], output_dir=str(out), progress=False))
    return data
