"""Every command answers the everyday mistakes in one line: exit 2, no traceback, the input named.

The table: `ROWS` maps each command of the CLI to a function `rows(inputs) -> {mistake: row}`, one
entry per name in `MISTAKES`. A row is `Row(argv, named)`: the command's arguments with that one
input spoiled (everything else valid, from the `inputs` fixture), and the texts stderr must hold
(the input's path or flag, and what the message must say). A mistake that cannot happen to a
command is a string saying why (`extract` reads no JSON data). Each row runs in-process
(`cli.main([...])`, capsys), which is faithful here: the boundary is `cli.main` itself.

Every row asserts: exit 2; no "Traceback"; a line starting `vlm-vision COMMAND`; the named texts;
no model and no tokenizer was loaded (transformers' `from_pretrained` and the tower's are recorded);
and the output path, fresh before the row, still does not exist (the checks come before any write).

The commands come from the CLI's own parser (`cli.build_parser`), so a command without rows fails
`test_every_command_has_a_row_for_every_mistake`. To add a command (`export`, `data-stats`, ...):
write `def _<name>_rows(i: Inputs) -> dict[str, Row | str]` with one entry per mistake, and add
`"<name>": _<name>_rows` to `ROWS`. `Inputs` holds the valid and the spoiled files; add a field
there when a command needs a new kind of input.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.vlm_vision.tiny_clip import save_tiny_clip
from tests.vlm_vision.train_fixtures import QUESTION, write_llm_folder, write_tower_folder
from vlm_vision.commands import main as cli
DATA = Path(__file__).resolve().parents[2] / "data"

MISTAKES = ("data_not_json", "mixture_names_a_missing_file", "mixture_with_a_python_tag", "llm_path_typo",
            "tower_path_missing", "output_is_an_existing_file", "empty_data", "model_folder_missing",
            "bad_flag_value", "output_not_writable", "media_root_missing")


@dataclasses.dataclass(frozen=True)
class Row:
    """One bad invocation: the arguments after the command name, and texts its stderr must hold."""

    argv: list[str]
    named: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Inputs:
    """Valid inputs of every command and the spoiled ones, all under `root` (see `make_inputs`)."""

    root: Path

    def __getattr__(self, name: str) -> Path:  # every input is a fixed name under root
        return self.root / name.replace("__", ".")

    @property
    def out(self) -> Path:
        """A fresh output path: no row may create it."""
        return self.root / "fresh_out"


# ----- the rows, one function per command ------------------------------------------------------


def _extract_rows(i: Inputs) -> dict[str, Row | str]:
    base = ["--model", str(i.tower), "--workers", "0"]
    return {
        "data_not_json": "extract reads videos, not JSON data (an undecodable video is a failed item: exit 1)",
        "mixture_names_a_missing_file": "extract reads no data mixtures",
        "mixture_with_a_python_tag": "extract reads no data mixtures",
        "llm_path_typo": "extract has no LLM",
        "tower_path_missing": Row([str(i.video__mp4), "--out", str(i.out), "--model", str(i.towr)],
                                  (f"--model {i.towr}", "not available on this machine", "--random-weights")),
        "output_is_an_existing_file": Row([str(i.video__mp4), "--out", str(i.a_file__txt), *base],
                                          (f"--out {i.a_file__txt}", "an existing file")),
        "empty_data": Row([str(i.empty__txt), "--out", str(i.out), *base], (str(i.empty__txt), "no videos")),
        "model_folder_missing": "extract's model is its tower (tower_path_missing)",
        "bad_flag_value": Row([str(i.video__mp4), "--out", str(i.out), "--num-frames", "0", *base],
                              ("--num-frames",)),
        "output_not_writable": Row([str(i.video__mp4), "--out", str(i.unwritable / "out"), *base],
                                   (str(i.unwritable / "out"), "not writable")),
        "media_root_missing": Row([str(i.no_media), "--out", str(i.out), *base], (str(i.no_media), "not found")),
    }


def _train_rows(i: Inputs) -> dict[str, Row | str]:
    def train(**spoiled: str) -> list[str]:
        flags = {"llm": i.llm, "tower": i.tower, "data": i.train__jsonl, "media_root": i.media,
                 "output_dir": i.out, "max_steps": 1, **spoiled}
        return [part for k, v in flags.items() for part in ("--" + k.replace("_", "-"), str(v))] + ["--no-progress"]

    return {
        "data_not_json": Row(train(data=i.notes__json), (f"--data {i.notes__json}", "not JSON")),
        "mixture_names_a_missing_file": Row(train(data=i.mix_missing__yaml), ("nothere.json", str(i.mix_missing__yaml))),
        "mixture_with_a_python_tag": Row(train(data=i.mix_tag__yaml), (str(i.mix_tag__yaml), "python/object")),
        "llm_path_typo": Row(train(llm=i.llm_typo), (f"--llm {i.llm_typo}", "not available on this machine")),
        "tower_path_missing": Row(train(tower=i.towr), (f"--tower {i.towr}", "not available on this machine")),
        "output_is_an_existing_file": Row(train(output_dir=i.a_file__txt), (f"--output-dir {i.a_file__txt}",)),
        "empty_data": Row(train(data=i.empty__json), (str(i.empty__json), "no records")),
        "model_folder_missing": Row(train(init_from=i.no_run), (f"--init-from {i.no_run}", "not found")),
        "bad_flag_value": Row(train(batch_size=0), ("--batch-size 0", "positive")),
        "output_not_writable": Row(train(output_dir=i.unwritable / "run"), (str(i.unwritable / "run"),
                                                                            "not writable")),
        "media_root_missing": Row(train(media_root=i.no_media), (f"--media-root {i.no_media}", "not found")),
    }


def _eval_rows(i: Inputs) -> dict[str, Row | str]:
    def evaluate(**spoiled: str) -> list[str]:
        flags = {"model": i.trained, "data": i.questions__jsonl, "media_root": i.media, "output_dir": i.out,
                 **spoiled}
        return [part for k, v in flags.items() for part in ("--" + k.replace("_", "-"), str(v))] + ["--no-progress"]

    return {
        "data_not_json": Row(evaluate(data=i.notes__json), (f"--data {i.notes__json}", "not JSON")),
        "mixture_names_a_missing_file": Row(evaluate(data=i.mix_missing__yaml), (str(i.mix_missing__yaml),)),
        "mixture_with_a_python_tag": Row(evaluate(data=i.mix_tag__yaml), (str(i.mix_tag__yaml),)),
        "llm_path_typo": Row(evaluate(model=i.trained_llm_typo), (str(i.llm_typo), "not available on this machine")),
        "tower_path_missing": Row(evaluate(model=i.trained_towr), (str(i.towr), "not available on this machine")),
        "output_is_an_existing_file": Row(evaluate(output_dir=i.a_file__txt), (f"--output-dir {i.a_file__txt}",)),
        "empty_data": Row(evaluate(data=i.empty__json), (str(i.empty__json), "no records")),
        "model_folder_missing": Row(evaluate(model=i.no_run), (f"--model {i.no_run}", "not available on this "
                                                               "machine", "does not exist")),
        "bad_flag_value": Row(evaluate(batch_size=0), ("--batch-size 0",)),
        "output_not_writable": Row(evaluate(output_dir=i.unwritable / "eval"), (str(i.unwritable / "eval"),
                                                                               "not writable")),
        "media_root_missing": Row(evaluate(media_root=i.no_media), (f"--media-root {i.no_media}", "not found")),
    }


def _clip_train_rows(i: Inputs) -> dict[str, Row | str]:
    def clip(**spoiled: str) -> list[str]:
        flags = {"model": i.clip, "data": i.pairs__jsonl, "media_root": i.media, "output_dir": i.out,
                 "max_steps": 1, **spoiled}
        return [part for k, v in flags.items() for part in ("--" + k.replace("_", "-"), str(v))]

    return {
        "data_not_json": Row(clip(data=i.notes__json), (f"--data {i.notes__json}", "not JSON")),
        "mixture_names_a_missing_file": Row(clip(data=i.mix_missing__yaml), (str(i.mix_missing__yaml),)),
        "mixture_with_a_python_tag": Row(clip(data=i.mix_tag__yaml), (str(i.mix_tag__yaml),)),
        "llm_path_typo": "clip-train has no LLM",
        "tower_path_missing": Row(clip(model=i.towr), (f"--model {i.towr}", "not available on this machine")),
        "output_is_an_existing_file": Row(clip(output_dir=i.a_file__txt), (f"--output-dir {i.a_file__txt}",)),
        "empty_data": Row(clip(data=i.empty__json), (str(i.empty__json), "no records")),
        "model_folder_missing": "clip-train's model is CLIP itself (tower_path_missing)",
        "bad_flag_value": Row(clip(batch_size=0), ("--batch-size 0", "positive")),
        "output_not_writable": Row(clip(output_dir=i.unwritable / "clip"), (str(i.unwritable / "clip"),
                                                                           "not writable")),
        "media_root_missing": Row(clip(media_root=i.no_media), (f"--media-root {i.no_media}", "not found")),
    }


def _convert_data_rows(i: Inputs) -> dict[str, Row | str]:
    def convert(data: Path, output: Path | None = None, *flags: str) -> list[str]:
        return [str(data), "--output", str(output or i.out), *flags]

    return {
        "data_not_json": Row(convert(i.notes__json), (str(i.notes__json), "not JSON")),
        "mixture_names_a_missing_file": Row(convert(i.mix_missing__yaml), ("nothere.json", str(i.mix_missing__yaml))),
        "mixture_with_a_python_tag": Row(convert(i.mix_tag__yaml), (str(i.mix_tag__yaml), "python/object")),
        "llm_path_typo": "convert-data loads no model",
        "tower_path_missing": "convert-data loads no model",
        "output_is_an_existing_file": Row(convert(i.train__jsonl, i.media), (f"--output {i.media}",
                                                                           "an existing folder")),
        "empty_data": Row(convert(i.empty__json), (str(i.empty__json), "no records")),
        "model_folder_missing": "convert-data loads no model",
        "bad_flag_value": Row(convert(i.train__jsonl, None, "--seed", "many"), ("--seed",)),
        "output_not_writable": Row(convert(i.train__jsonl, i.unwritable / "llava.json"),
                                   (str(i.unwritable / "llava.json"), "not writable")),
        "media_root_missing": "convert-data reads no media",
    }


def _export_rows(i: Inputs) -> dict[str, Row | str]:
    def export(run: Path, out: Path | None = None, *flags: str) -> list[str]:
        return [str(run), "--out", str(out or i.out), *flags]

    return {
        "data_not_json": "export reads a model folder, no data",
        "mixture_names_a_missing_file": "export reads no data mixtures",
        "mixture_with_a_python_tag": "export reads no data mixtures",
        "llm_path_typo": Row(export(i.trained_llm_typo), (str(i.llm_typo), "not available on this machine")),
        "tower_path_missing": Row(export(i.trained_towr), (str(i.towr), "not available on this machine")),
        "output_is_an_existing_file": Row(export(i.trained, i.a_file__txt), (f"--out {i.a_file__txt}",)),
        "empty_data": "export reads no data",
        "model_folder_missing": Row(export(i.no_run), (f"RUN {i.no_run}", "not available on this machine",
                                                       "does not exist")),
        "bad_flag_value": Row(export(i.trained, None, "--max-shard-size", "lots"), ("--max-shard-size", "lots")),
        "output_not_writable": Row(export(i.trained, i.unwritable / "export"), (str(i.unwritable / "export"),
                                                                               "not writable")),
        "media_root_missing": "export reads no media",
    }


def _report_rows(i: Inputs) -> dict[str, Row | str]:
    def report(eval_dir: Path, *flags: str, output: Path | None = None) -> list[str]:
        return [str(eval_dir), "--output", str(output or i.out), "--no-progress", *flags]

    return {
        "data_not_json": Row(report(i.eval_not_json), (str(i.eval_not_json / "predictions.jsonl"), "not JSON")),
        "mixture_names_a_missing_file": "report reads eval folders, no data mixtures",
        "mixture_with_a_python_tag": "report reads eval folders, no data mixtures",
        "llm_path_typo": "report loads no model",
        "tower_path_missing": "report loads no model",
        "output_is_an_existing_file": Row(report(i.evaluated, output=i.media), (f"--output {i.media}",
                                                                              "an existing folder")),
        "empty_data": Row(report(i.eval_empty), (str(i.eval_empty / "predictions.jsonl"), "no predictions")),
        "model_folder_missing": "report loads no model (a missing EVAL_DIR: media_root_missing)",
        "bad_flag_value": Row(report(i.evaluated, "--thumb-height", "0"), ("--thumb-height 0", "positive")),
        "output_not_writable": Row(report(i.evaluated, output=i.unwritable / "report.html"),
                                   (str(i.unwritable / "report.html"), "not writable")),
        "media_root_missing": Row(report(i.no_eval), (f"EVAL_DIR {i.no_eval}", "not found")),
    }


def _demo_rows(i: Inputs) -> dict[str, Row | str]:
    def demo(model: Path, *flags: str) -> list[str]:
        return [str(model), "--port", "0", *flags]

    return {
        "data_not_json": "demo reads videos, no JSON data (an upload that is not a video is refused on the page)",
        "mixture_names_a_missing_file": "demo reads no data mixtures",
        "mixture_with_a_python_tag": "demo reads no data mixtures",
        "llm_path_typo": Row(demo(i.trained_llm_typo), (str(i.llm_typo), "not available on this machine")),
        "tower_path_missing": Row(demo(i.trained_towr), (str(i.towr), "not available on this machine")),
        "output_is_an_existing_file": "demo writes no output (uploads go to a temporary folder it deletes)",
        "empty_data": "demo reads no data file",
        "model_folder_missing": Row(demo(i.no_run), (f"MODEL {i.no_run}", "not available on this machine",
                                                     "does not exist")),
        "bad_flag_value": Row(demo(i.trained, "--num-frames", "0"), ("--num-frames 0", "positive")),
        "output_not_writable": "demo writes no output",
        "media_root_missing": Row(demo(i.trained, "--videos", str(i.no_media)), (f"--videos {i.no_media}",
                                                                                "not found")),
    }


def _data_stats_rows(i: Inputs) -> dict[str, Row | str]:
    def stats(data: Path | None = None, **spoiled: str) -> list[str]:
        flags = {"llm": i.llm, "tower": i.tower, "media_root": i.media, "output_dir": i.out, **spoiled}
        return [str(data or i.train__jsonl)] + [part for k, v in flags.items()
                                                 for part in ("--" + k.replace("_", "-"), str(v))]

    return {
        "data_not_json": Row(stats(i.notes__json), (f"DATA {i.notes__json}", "not JSON")),
        "mixture_names_a_missing_file": Row(stats(i.mix_missing__yaml), ("nothere.json", str(i.mix_missing__yaml))),
        "mixture_with_a_python_tag": Row(stats(i.mix_tag__yaml), (str(i.mix_tag__yaml), "python/object")),
        "llm_path_typo": Row(stats(llm=i.llm_typo), (f"--llm {i.llm_typo}", "not available on this machine")),
        "tower_path_missing": Row(stats(tower=i.towr), (f"--tower {i.towr}", "not available on this machine")),
        "output_is_an_existing_file": Row(stats(output_dir=i.a_file__txt), (f"--output-dir {i.a_file__txt}",
                                                                            "an existing file")),
        "empty_data": Row(stats(i.empty__json), (str(i.empty__json), "no records")),
        "model_folder_missing": "data-stats reads no model folder (its --llm and --tower: llm_path_typo, "
                                "tower_path_missing)",
        "bad_flag_value": Row(stats(num_frames=0), ("--num-frames 0", "positive")),
        "output_not_writable": Row(stats(output_dir=i.unwritable / "stats"), (str(i.unwritable / "stats"),
                                                                              "not writable")),
        "media_root_missing": Row(stats(media_root=i.no_media), (f"--media-root {i.no_media}", "not found")),
    }


ROWS: dict[str, Callable[[Inputs], dict[str, Row | str]]] = {
    "extract": _extract_rows,
    "train": _train_rows,
    "eval": _eval_rows,
    "clip-train": _clip_train_rows,
    "convert-data": _convert_data_rows,
    "export": _export_rows,
    "report": _report_rows,
    "demo": _demo_rows,
    "data-stats": _data_stats_rows,
}

# Mistakes of one command beyond the shared list: (command, name) -> rows(inputs) -> Row, asserted as the table's.
MORE_ROWS: dict[tuple[str, str], Callable[[Inputs], Row]] = {
    ("report", "eval_dir_is_a_file"): lambda i: Row([str(i.a_file__txt), "--output", str(i.out)],
                                                    (f"EVAL_DIR {i.a_file__txt}", "not a folder")),
    ("report", "eval_dir_without_predictions"): lambda i: Row([str(i.media), "--output", str(i.out)],
                                                              (str(i.media), "no predictions.jsonl")),
    ("report", "compare_missing"): lambda i: Row([str(i.evaluated), "--compare", str(i.no_eval), "--output",
                                                  str(i.out)], (f"--compare {i.no_eval}", "not found")),
    ("report", "jpeg_quality_100"): lambda i: Row([str(i.evaluated), "--jpeg-quality", "100", "--output", str(i.out)],
                                                  ("--jpeg-quality 100", "1 to 95")),
    ("report", "page_size_0"): lambda i: Row([str(i.evaluated), "--page-size", "0", "--output", str(i.out)],
                                             ("--page-size 0", "positive")),
    ("report", "thumb_height_not_a_number"): lambda i: Row([str(i.evaluated), "--thumb-height", "tall"],
                                                           ("--thumb-height", "tall")),
    ("demo", "model_is_a_file"): lambda i: Row([str(i.a_file__txt)], (f"MODEL {i.a_file__txt}", "not a folder")),
    ("demo", "port_out_of_range"): lambda i: Row([str(i.trained), "--port", "70000"], ("--port 70000", "65535")),
    ("demo", "max_upload_mb_0"): lambda i: Row([str(i.trained), "--max-upload-mb", "0"],
                                               ("--max-upload-mb 0", "positive")),
    ("demo", "num_frames_not_a_number"): lambda i: Row([str(i.trained), "--num-frames", "many"],
                                                       ("--num-frames", "many")),
    ("demo", "videos_is_a_file"): lambda i: Row([str(i.trained), "--videos", str(i.a_file__txt)],
                                                (f"--videos {i.a_file__txt}", "not a folder")),
}


# ----- the inputs --------------------------------------------------------------------------------


def _unwritable(root: Path) -> Path:
    """A folder this process cannot write in: a read-only folder, or (as root, who may write anywhere
    on a writable file system) a read-only mount such as /proc/sys."""
    folder = root / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/proc/sys"), Path("/sys")):
        if candidate.is_dir() and not os.access(candidate, os.W_OK):
            return candidate
    raise AssertionError("no folder that this process cannot write in (read-only folder, /proc/sys, /sys)")


def _trained_folder(folder: Path, llm: Path, tower: Path) -> Path:
    """A trained folder's `vlm_config.json` naming `llm` and `tower` (no weights: every row stops first)."""
    from vlm_vision.model.run_folder import CONFIG_NAME, TrainedSpec

    folder.mkdir()
    spec = TrainedSpec(llm=str(llm), tower=str(tower), projector_type="mlp2x_gelu", vocab_size=0, new_token_ids=[],
                       image_token_id=None, video_token_id=None)
    (folder / CONFIG_NAME).write_text(spec.to_json())
    return folder


def _prediction(video: Path) -> dict:
    """One answered open question, with the fields `vlm-vision report` reads (as `vlm-vision eval` writes them)."""
    return {"id": "q", "source": "questions.jsonl", "category": None, "duration": 2.0, "media": str(video),
            "frames": {"indices": [0, 1], "times": [0.0, 1.0]}, "tokens": {"text": 12, "visual": 8},
            "type": "open_ended", "question": "Colour?", "answer": ["red"], "prediction": "red", "correct": True,
            "scores": {"exact_match": 1.0, "token_f1": 1.0}}


def _eval_folder(folder: Path, lines: list[str]) -> Path:
    """An eval output folder: predictions.jsonl of `lines`, and metrics.json."""
    folder.mkdir()
    (folder / "predictions.jsonl").write_text("".join(line + "\n" for line in lines))
    (folder / "metrics.json").write_text(json.dumps({"overall": {}}))
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    """Valid inputs of every command, and the everyday mistakes, as files."""
    i = Inputs(tmp_path_factory.mktemp("bad_input"))
    write_llm_folder(i.llm)
    write_tower_folder(i.tower)
    object.__setattr__(i, "clip", save_tiny_clip(i.root / "clip_src"))
    i.media.mkdir()
    shutil.copy(DATA / "realshort.mp4", i.media / "clip.mp4")
    shutil.copy(DATA / "realshort.mp4", i.video__mp4)
    conversation = [{"from": "human", "value": QUESTION}, {"from": "gpt", "value": "Red."}]
    i.train__jsonl.write_text(json.dumps({"id": "a", "video": "clip.mp4", "conversations": conversation}) + "\n")
    i.questions__jsonl.write_text(json.dumps({"id": "q", "video": "clip.mp4", "question": "Colour?",
                                              "options": ["red", "blue"], "answer": "red"}) + "\n")
    i.pairs__jsonl.write_text(json.dumps({"video": "clip.mp4", "caption": "a clip"}) + "\n")
    _trained_folder(i.trained, i.llm, i.tower)
    _trained_folder(i.trained_llm_typo, i.llm_typo, i.tower)
    _trained_folder(i.trained_towr, i.llm, i.towr)
    _eval_folder(i.evaluated, [json.dumps(_prediction(i.media / "clip.mp4"))])
    _eval_folder(i.eval_not_json, ["id,source,question,prediction", "q,questions.jsonl,Colour?,red"])
    _eval_folder(i.eval_empty, [])
    # the mistakes
    i.notes__json.write_text("id,video,caption\n1,clip.mp4,a clip\n")  # a CSV saved as .json
    i.mix_missing__yaml.write_text(f"datasets:\n  - json_path: {i.train__jsonl}\n  - json_path: nothere.json\n")
    i.mix_tag__yaml.write_text("datasets: !!python/object/apply:os.getcwd []\n")
    i.empty__json.write_text("[ ]\n")
    i.empty__txt.write_text("# no videos listed yet\n")
    i.a_file__txt.write_text("a file, not a folder\n")
    object.__setattr__(i, "unwritable", _unwritable(i.root))
    return i


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """Names of the models and tokenizers loaded during the test (transformers' and the tower's from_pretrained)."""
    from transformers import PreTrainedModel
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    from vlm_vision.model.tower import CLIPVisionTower

    seen: list[str] = []
    for cls in (PreTrainedModel, PreTrainedTokenizerBase, CLIPVisionTower):
        real = cls.__dict__["from_pretrained"].__func__

        def recording(klass, name, *args, _real=real, **kwargs):
            seen.append(f"{klass.__name__}.from_pretrained({name})")
            return _real(klass, name, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(recording))
    return seen


def _all_rows() -> list[tuple[str, str]]:
    """(command, mistake) of every row that is not marked impossible, from paths only (no files needed)."""
    dummy = Inputs(Path("/nonexistent"))
    return [(command, mistake) for command, rows in ROWS.items() for mistake, row in rows(dummy).items()
            if isinstance(row, Row)]


def run_cli(argv: list[str]) -> int:
    """`cli.main`'s exit code; argparse's own refusals exit through SystemExit."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return int(e.code)


# ----- the tests ---------------------------------------------------------------------------------


def test_every_command_has_a_row_for_every_mistake():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(commands) == set(ROWS), f"commands without rows in ROWS: {sorted(set(commands) - set(ROWS))}"
    dummy = Inputs(Path("/nonexistent"))
    for command, rows in ROWS.items():
        assert tuple(rows(dummy)) == MISTAKES, command


@pytest.mark.parametrize(("command", "mistake"), _all_rows())
def test_bad_input_is_one_line_exit_2_naming_it(command, mistake, inputs, loads, capsys):
    row = ROWS[command](inputs)[mistake]
    code = run_cli([command, *row.argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert f"vlm-vision {command}" in err
    for text in row.named:
        assert text in err, (text, err)
    assert loads == [], f"loaded before the input was checked: {loads}"
    assert not inputs.out.exists(), "an output was written before the input was checked"


@pytest.mark.parametrize(("command", "mistake"), list(MORE_ROWS))
def test_more_mistakes_of_one_command(command, mistake, inputs, loads, capsys):
    row = MORE_ROWS[command, mistake](inputs)
    code = run_cli([command, *row.argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and f"vlm-vision {command}" in err
    for text in row.named:
        assert text in err, (text, err)
    assert loads == [], f"loaded before the input was checked: {loads}"
    assert not inputs.out.exists(), "an output was written before the input was checked"


def test_a_valid_report_row_writes_the_page(inputs, tmp_path, capsys):
    """The report rows' valid eval folder is one `report` accepts: each row fails only by its spoiled input."""
    page = tmp_path / "report.html"
    assert run_cli(["report", str(inputs.evaluated), "--output", str(page), "--no-progress"]) == 0, \
        capsys.readouterr().err
    assert page.is_file() and "Colour?" in page.read_text()


def test_debug_shows_the_traceback_of_an_input_error(inputs, capsys):
    row = _train_rows(inputs)["data_not_json"]
    assert run_cli(["train", *row.argv, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "InputError" in err and f"--data {inputs.notes__json}" in err


def test_the_first_process_alone_prints_a_shared_mistake(inputs, capsys, monkeypatch):
    """Under a launcher every process finds the same mistake: all exit 2, only rank 0 prints it."""
    row = _train_rows(inputs)["data_not_json"]
    monkeypatch.setenv("RANK", "1")
    assert run_cli(["train", *row.argv]) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    assert run_cli(["train", *row.argv]) == 2
    assert "not JSON" in capsys.readouterr().err


def test_a_mistake_of_one_process_is_printed_by_it(monkeypatch, capsys):
    """`--device cuda` on a process without CUDA concerns that process: it prints it, with its rank."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the case is a process without it")
    monkeypatch.setenv("RANK", "3")
    assert run_cli(["extract", str(DATA / "realshort.mp4"), "--out", "unused", "--device", "cuda",
                    "--random-weights", "--model", "ViT-B/32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("[rank 3] vlm-vision extract: CUDA is not available on this machine (--device cuda)")


def test_weights_not_here_name_the_path_and_how_to_get_them(inputs, capsys):
    """An LLM path with a typo: named, 'not on this machine', how to download, never transformers' advice."""
    row = _train_rows(inputs)["llm_path_typo"]
    assert run_cli(["train", *row.argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vlm-vision train: the LLM weights '{inputs.llm_typo}' are not available on this "
                          f"machine (--llm {inputs.llm_typo})")
    assert "check the path (a typo?)" in err and "internet connection" not in err


def test_a_hub_id_not_in_the_cache_while_offline(inputs, capsys):
    row = _train_rows(inputs)["llm_path_typo"]
    argv = [a if a != str(inputs.llm_typo) else "no-org/no-such-llm" for a in row.argv]
    assert run_cli(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert "'no-org/no-such-llm' are not available on this machine" in err and "HF_HUB_OFFLINE" in err
    assert "hf download no-org/no-such-llm" in err



def test_a_loader_error_about_the_weights_becomes_the_weights_message():
    """Online, a Hub id that does not exist reaches transformers; its OSError (which, without a network,
    does not even name the id) becomes the same message, found from the failing call's arguments."""
    from vlm_vision.errors import InputError
    from vlm_vision.commands.input_checks import weights_errors

    def load(name_or_path):  # as transformers' loaders fail without a network
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files. Check your internet "
                      "connection.")

    with pytest.raises(InputError, match=r"the LLM weights 'no-org/no-llm' are not available on this machine "
                                         r"\(--llm no-org/no-llm\)"):
        with weights_errors({"--llm": "no-org/no-llm", "--tower": "openai/clip"}, what="LLM weights"):
            load("no-org/no-llm")
    with pytest.raises(OSError, match="No space left"):  # not about the weights: left alone
        with weights_errors({"--llm": "no-org/no-llm"}):
            raise OSError(28, "No space left on device")


@pytest.mark.slow
def test_under_torchrun_every_process_exits_2_and_the_line_is_printed_once(inputs):
    """Two real processes find the same mistake: the line once (by rank 0), and torchrun's summary gives
    rank 0 exit code 2 as the root cause (the other process waits, so the line is out before torchrun
    stops it)."""
    import subprocess

    row = _train_rows(inputs)["data_not_json"]
    repo = Path(__file__).resolve().parents[3]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m",
                           "vlm_vision.commands.main", "train", *row.argv], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"})
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert output.count(f"vlm-vision train: not JSON (--data {inputs.notes__json})") == 1, output[-3000:]
    root_cause = output.split("Root Cause")[1]
    assert "rank      : 0" in root_cause and "exitcode  : 2" in root_cause, output[-3000:]


def test_one_bad_line_of_json_lines_is_a_skipped_record_not_a_bad_file(tmp_path):
    """The sniff refuses a file of which no line is JSON, never one whose first line alone is broken."""
    from vlm_vision.errors import InputError
    from vlm_vision.commands.input_checks import check_data_spec

    good = json.dumps({"id": "a", "conversations": []})
    (tmp_path / "first_bad.jsonl").write_text("{broken\n" + good + "\n")
    check_data_spec(tmp_path / "first_bad.jsonl", "--data")
    (tmp_path / "csv.jsonl").write_text("id,video\n1,a.mp4\n2,b.mp4\n")
    with pytest.raises(InputError, match="not JSON lines"):
        check_data_spec(tmp_path / "csv.jsonl", "--data")
    (tmp_path / "long.jsonl").write_text(json.dumps({"id": "x" * 100_000}) + "\n")  # longer than the sniff
    check_data_spec(tmp_path / "long.jsonl", "--data")
