"""Checks of a command's inputs that cost neither a model load nor a data scan, run before either.

A typo in a flag should cost the start-up only. Each command calls these first, in the order a
user would fix them, and each raises `vlm_vision.errors.InputError` naming the flag and its
value: `vlm-vision train: folder not found (--media-root data/mdia): an existing folder ...`.

What is checked without reading more than a few KiB:
  - data files: the spec's files exist (a YAML mixture is read, safely: a `!!python/object` tag is
    refused naming the file), each looks like JSON or JSON lines and is not empty;
  - folders that are read (media roots) exist and are folders;
  - output folders and files: not an existing file (or folder), and creatable and writable here;
  - weights (LLM, tower, CLIP, a trained model): a local path exists; a Hub id is in the local
    cache when the Hub is offline. Otherwise the message says the weights are not on this machine
    and how to get them (`weights_unavailable`), as `vlm-vision extract` always said.
Every process of a multi-process run makes the same checks, so all of them stop together.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from vlm_vision.errors import InputError

__all__ = ["WeightsUnavailable", "check_data_spec", "check_folder", "check_model_folder", "check_output_file", "check_output_folder",
           "check_weights", "hub_offline", "weights_errors", "weights_unavailable"]

# A Hub id: `name` or `owner/name`, letters, digits, `-`, `_`, `.` (no leading dot, no `..`).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_SNIFF_BYTES = 1 << 16
_SNIFF_LINES = 20


class WeightsUnavailable(InputError):
    """Pretrained weights that are not on this machine (and were not downloaded)."""


def weights_unavailable(name: str, flag: str, why: str, *, what: str = "weights",
                        extra_hint: str | None = None, fix: str | None = None) -> WeightsUnavailable:
    """The error for weights that are not here: names them, says why, and how to get them.

    Args:
        name: the path or Hub id as given.
        flag: the flag that named it (`--llm`, `--tower`, `--model`).
        why: what was found (no such path, not in the cache while offline, the loader's error).
        what: which weights ("LLM weights", "tower weights", "model").
        extra_hint: one more way out (extract's `--random-weights`).
        fix: how to point at other weights (default: pass `flag` with a local folder or checkpoint file).
    """
    fix = fix or f"pass {flag.split()[0]} with a local folder or checkpoint file"
    get = (f"check the path (a typo?) or copy the {what} to this machine" if _looks_like_path(name) else
           f"download them once while online (`hf download {name}`)")
    hint = f"Why: {why}\n  To use them: {get}, or {fix}."
    if extra_hint:
        hint += f"\n  {extra_hint}"
    verb = "are" if what.endswith("weights") else "is"
    return WeightsUnavailable(f"the {what} {name!r} {verb} not available on this machine", f"{flag} {name}",
                              "a local folder or file, or a Hub id downloaded once", hint=hint)


def hub_offline() -> bool:
    """True when the Hugging Face Hub may not be reached (`HF_HUB_OFFLINE` or `TRANSFORMERS_OFFLINE`)."""
    from huggingface_hub import constants  # lazy: only a weights check needs it

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("TRANSFORMERS_OFFLINE", "") not in ("", "0", "false")


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache  # lazy: only a weights check needs it

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _looks_like_path(name: str) -> bool:
    """A name that can only be a local path: not a Hub id, or one whose first folder exists here."""
    if Path(name).expanduser().is_absolute() or name.startswith("."):
        return True
    if not _HUB_ID.match(name):
        return True
    first = name.split("/")[0]
    return "/" in name and Path(first).is_dir()


def check_weights(name: str, flag: str, *, what: str = "weights", extra_hint: str | None = None,
                  fix: str | None = None) -> None:
    """Refuse weights that cannot be here: a missing local path, or a Hub id not cached while offline.

    A Hub id that is not cached while online is let through (the loader downloads it; a failure
    there is turned into the same message by `weights_errors`).

    Raises:
        WeightsUnavailable: naming `flag`, the name and how to get the weights.
    """
    path = Path(name).expanduser()
    if path.exists():
        return
    if _looks_like_path(name):
        raise weights_unavailable(name, flag, f"{path} does not exist (a local path, not a Hub id)", what=what,
                                  extra_hint=extra_hint, fix=fix)
    if hub_offline() and not _in_hub_cache(name):
        raise weights_unavailable(name, flag, "no such local path, and the Hub id is not in the Hugging Face cache "
                                  "while the Hub is offline (HF_HUB_OFFLINE)", what=what, extra_hint=extra_hint,
                                  fix=fix)


@contextlib.contextmanager
def weights_errors(names: Mapping[str, str], what: str = "weights") -> Iterator[None]:
    """Turn a loader's `OSError` about one of `names` ({flag: path or Hub id}) into `weights_unavailable`.

    transformers answers a name it cannot find (or cannot download) with an `OSError`: one that
    names it, or, without a network, advice about the internet connection that does not. The name
    is then found among the arguments of the failing calls (the deepest one that holds it). Any
    other `OSError` (a full disk, a permission) is left alone.
    """
    try:
        yield
    except OSError as e:
        flag = _weights_named(e, names)
        if flag is None:
            raise
        text = str(e).strip()
        why = f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"
        raise weights_unavailable(names[flag], flag, why, what=what) from e


def _weights_named(error: OSError, names: Mapping[str, str]) -> str | None:
    """The flag whose weights `error` is about: named in its text, else an argument of a failing call."""
    if isinstance(error, (PermissionError, IsADirectoryError)) or error.errno == errno.ENOSPC:
        return None
    text = str(error)
    for flag, name in names.items():
        if name and name in text:
            return flag
    found = None
    tb = error.__traceback__
    while tb is not None:  # outermost to innermost: the last match is the call that loaded it
        values = [str(v) for v in tb.tb_frame.f_locals.values() if isinstance(v, (str, os.PathLike))]
        found = next((flag for flag, name in names.items() if name and name in values), found)
        tb = tb.tb_next
    return found


def check_folder(path: str | os.PathLike | None, flag: str, expected: str = "an existing folder") -> None:
    """Refuse a folder to read from that does not exist or is a file (nothing to check for None)."""
    if path is None:
        return
    p = Path(path)
    if not p.exists():
        raise InputError("folder not found", f"{flag} {path}", expected)
    if not p.is_dir():
        raise InputError("not a folder", f"{flag} {path}", expected)


def _writable_here(p: Path, flag: str, shown: object, kind: str) -> None:
    """The nearest existing folder at or above `p` must be a folder this user may write in."""
    ancestor = p if p.exists() else next((a for a in p.absolute().parents if a.exists()), Path("/"))
    if not ancestor.is_dir():
        raise InputError(f"cannot create the {kind}", f"{flag} {shown}", f"a path below a folder, but {ancestor} "
                         f"is a file")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError("not writable", f"{flag} {shown}", f"a {kind} that {_user()} can write; "
                         f"{ancestor} is read-only here")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a container user without a name
        return f"uid {os.getuid()}"


def check_output_folder(path: str | os.PathLike, flag: str) -> None:
    """Refuse an output folder that is an existing file, or that cannot be created or written here."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError("an existing file, not a folder", f"{flag} {path}", "a folder to write into (or a new "
                         "path where one can be created)")
    _writable_here(p, flag, path, "folder")


def check_output_file(path: str | os.PathLike, flag: str) -> None:
    """Refuse an output file that is an existing folder, or whose folder cannot be created or written."""
    p = Path(path)
    if p.is_dir():
        raise InputError("an existing folder, not a file", f"{flag} {path}", "a file path to write")
    _writable_here(p.parent, flag, path, "file")


def check_data_spec(spec: str | os.PathLike, flag: str, *, mixtures: bool = True, parquet: bool = False) -> None:
    """Refuse a data spec whose files are missing, not JSON / JSON lines, or empty, reading a few KiB.

    With `mixtures`, a YAML mixture or a `prefix{a,b}.json` pattern names the files
    (`vlm_vision.data.files.data_files` refuses a missing or unsafe mixture); without, `spec` is
    one JSON or JSONL file, or with `parquet` also a `.parquet` file (eval's question files), whose
    first bytes must be Parquet's. A file that passes can still hold a bad record further on: its
    reader says so then.
    """
    from vlm_vision.data.files import data_files  # lazy: the YAML reader loads only for a mixture

    for path, _ in data_files(str(spec)) if mixtures else [(Path(spec), "all")]:
        shown = flag if str(path) == str(spec) else f"{flag} {spec} ->"
        if parquet and path.suffix == ".parquet":
            _sniff_parquet(path, shown)
        else:
            _sniff(path, shown)


def _sniff_parquet(path: Path, flag: str) -> None:
    """A Parquet file begins with the 4 bytes `PAR1` (its columns are checked when it is read)."""
    shown = f"{flag} {path}"
    if not path.is_file():
        raise InputError("data file not found" if not path.exists() else "not a file", shown, "a .parquet file")
    with path.open("rb") as f:
        head = f.read(4)
    if head != b"PAR1":
        raise InputError("empty data file" if not head else "not a Parquet file", shown,
                         "a Parquet file (it starts with PAR1)", hint=f"it starts with {head!r}" if head else None)


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


def _sniff(path: Path, flag: str) -> None:
    """The first bytes of a data file: JSON lines, or a JSON list that is not empty."""
    shown = f"{flag} {path}"
    if not path.exists():
        raise InputError("data file not found", shown, "an existing .json or .jsonl file")
    if not path.is_file():
        raise InputError("not a file", shown, "a .json or .jsonl file")
    with path.open("rb") as f:
        head = f.read(_SNIFF_BYTES)
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if not text:
        raise InputError("empty data file", shown, "at least one record (a JSON list, or one JSON object a line)")
    if path.suffix == ".jsonl":  # one bad line is a skipped record; a file of which no line parses is not JSONL
        pieces = text.split("\n")
        if len(head) == _SNIFF_BYTES:  # more follows: the last piece may be a line cut by the sniff
            pieces = pieces[:-1]
        lines = [line.strip() for line in pieces[:_SNIFF_LINES] if line.strip()]
        if lines and not any(_parses(line) for line in lines):
            raise InputError("not JSON lines", shown, f"one JSON object per line; none of the first {len(lines)} "
                             f"lines is JSON (the first is {lines[0][:40]!r})")
        return
    if text[0] != "[":
        what = "a JSON object, not a list" if text[0] == "{" else "not JSON"
        raise InputError(what, shown, "a JSON list of records (or .jsonl with one record per line)",
                         hint=f"it starts with {text[:40]!r}")
    if text[1:].lstrip().startswith("]"):
        raise InputError("no records", shown, "a JSON list holding at least one record")


def check_model_folder(path: str | os.PathLike, flag: str) -> None:
    """Refuse a model folder that is not here, and the base LLM or tower a trained folder names when
    those are not here (eval and export read the same folders)."""
    model = Path(path)
    if not model.exists():
        raise weights_unavailable(str(path), flag, f"{model} does not exist", what="model",
                                  fix=f"pass {flag} with a local folder: a training run's final/ or "
                                      "checkpoint-STEP/, a merged model, or a downloaded transformers "
                                      "LLaVA-NeXT-Video folder (`hf download ID --local-dir DIR`)")
    check_folder(model, flag, "a model folder (a run's final/ or checkpoint-STEP/, a merged model, or a "
                 "transformers LLaVA-NeXT-Video folder)")
    from vlm_vision.model.run_folder import CONFIG_NAME, TrainedSpec  # lazy: torch and transformers, for a run only

    if (model / CONFIG_NAME).is_file():  # the base LLM and tower a trained folder names
        spec = TrainedSpec.read(model)
        for part in ("llm", "tower"):
            check_weights(spec.resolve(getattr(spec, part), model), f"{flag} {path} -> {CONFIG_NAME} {part}",
                          what=f"{'LLM' if part == 'llm' else part} weights",
                          fix=f"put them back where {model / CONFIG_NAME} says (its \"{part}\"), or edit that path")
