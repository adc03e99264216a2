"""What `vlm-vision extract` does with each video: which inputs are videos, its output name, which
process writes it, and whether an output there is kept.

Output names are a pure function of the video's path relative to the input argument it was found
under (`videos/sub/c.mp4` found under `videos/` -> `sub__c`; a file given directly -> its stem), so
adding, removing or reordering inputs never renames another video's output. Two videos that would
share a name never share a file: within a run the second is reported as an error; across runs the
file's recorded source says whose tokens it holds (`decide`).

An existing output is kept only when its recorded source (resolved path, size, modification time,
content fingerprint; `video.provenance`) and every setting that changes its tokens equal this
run's; otherwise it is extracted again, and the reason is reported.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path, PurePath
from typing import Any


from video.atomic_files import temporary_files
from video.extract import read_token_header
from video.corpus.report import Outcome
from video.provenance import describe_differences, differences, source_identity

__all__ = ["Decision", "Found", "clashes", "decide", "find_inputs", "find_videos", "output_name", "plan_outputs",
           "shard"]

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi", ".mpg", ".mpeg", ".ts", ".flv",
                              ".wmv", ".3gp", ".ogv"})
LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})


@dataclasses.dataclass(frozen=True)
class Found:
    """A video to extract and its path relative to the input argument it was found under."""

    path: Path
    relative: PurePath


def find_inputs(inputs: Iterable[str | os.PathLike]) -> list[Found]:
    """Expand INPUTS into videos, in order, each file once (the first time it is found).

    A folder contributes its files with a video extension (recursively, sorted), relative to the
    folder; a .txt/.lst/.list file contributes the paths it lists (blank lines and lines starting
    with '#' skipped; relative paths are relative to the list file and keep that relative path,
    others keep their file name); anything else is taken as a video named by its file name, even
    if it does not exist (it is then reported as an error).
    """
    found: list[Found] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            videos = sorted(p for p in path.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())
            found.extend(Found(p, p.relative_to(path)) for p in videos)
        elif path.is_file() and path.suffix.lower() in LIST_EXTENSIONS:
            lines = path.read_text(encoding="utf-8").splitlines()
            listed = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
            for entry in listed:
                is_folder = (path.parent / entry).is_dir()
                for inner in find_inputs([path.parent / entry]):
                    found.append(Found(inner.path, _listed_relative(entry, inner, is_folder)))
        else:
            found.append(Found(path, PurePath(path.name)))
    seen: set[Path] = set()
    unique = []
    for f in found:
        key = f.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def find_videos(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """The video paths of `find_inputs`, in order, each once."""
    return [f.path for f in find_inputs(inputs)]


def _listed_relative(entry: str, inner: Found, is_folder: bool) -> PurePath:
    """A listed entry's relative path: as written when it stays below the list's folder."""
    written = PurePath(os.path.normpath(entry))
    if written.is_absolute() or written.parts[:1] == ("..",):
        return inner.relative
    return written / inner.relative if is_folder else written


def output_name(relative: PurePath) -> str:
    """The output stem of a video: its relative path with '/' as '__' and the extension dropped.

    Example:
        >>> output_name(PurePath("sub/clip.mp4"))
        'sub__clip'
    """
    parts = list(relative.parts)
    parts[-1] = PurePath(parts[-1]).stem
    return "__".join(parts)


def clashes(found: list[Found]) -> dict[int, int]:
    """{i: j} for every video i whose output name video j (< i, a different file) already took."""
    first: dict[str, int] = {}
    taken = {}
    for i, f in enumerate(found):
        name = output_name(f.relative)
        if name in first:
            taken[i] = first[name]
        else:
            first[name] = i
    return taken


@dataclasses.dataclass
class Decision:
    """What to do about one video's output.

    `action` is "keep" (an earlier output matches), "extract" (`why` says why an existing output
    is replaced, None when there is none) or "error" (`why` is the reason; nothing is written).
    """

    action: str
    why: str | None = None
    identity: dict[str, Any] | None = None
    shape: tuple[int, ...] | None = None


def decide(video: Path, output: Path, settings: dict[str, Any], *, overwrite: bool) -> Decision:
    """Keep, extract or refuse `output` for `video` under this run's token-changing `settings`.

    An output recorded from another file (another resolved path and other contents) is a clash:
    refused unless `overwrite`. One from the same file that differs in anything else is replaced.
    """
    if not output.exists():
        return Decision("extract")  # the source's identity is read where it is decoded
    if overwrite:
        return Decision("extract", "--overwrite")
    try:
        identity = source_identity(video)
    except OSError as e:
        return Decision("error", f"{type(e).__name__}: {e.strerror or e} ({video})")
    try:
        header = read_token_header(output)
    except (ValueError, OSError) as e:
        return Decision("extract", f"the existing output is not a readable video-tokens file ({e})", identity)
    meta = header.metadata
    recorded = meta.get("source_path")
    if (recorded is not None and recorded != identity["source_path"]
            and meta.get("source_fingerprint") != identity["source_fingerprint"]):
        return Decision("error", f"{output} holds the tokens of another video, {recorded}: both map to the output "
                                 f"name {output.stem!r}. Extract them into different --out folders, or pass "
                                 f"--overwrite to replace it", identity)
    differ = differences(meta, {**identity, **settings})
    if differ:
        return Decision("extract", f"the existing output differs: {describe_differences(differ)}", identity)
    return Decision("keep", identity=identity, shape=header.shape)


def shard(items: list, process_index: int, num_processes: int) -> list:
    """Items i with i % num_processes == process_index: one writer per output across processes."""
    return items[process_index::num_processes]


def plan_outputs(found: list[Found], out: Path, settings: dict[str, Any], rank: int, world: int, *,
                 overwrite: bool) -> tuple[list[Outcome], list[tuple[Path, Path, str | None]]]:
    """(outcomes settled before decoding, (video, output, why it is extracted again) still to do).

    Names clash check over all inputs (every process sees the same list), then this process's
    share. Also removes the temporary files an interrupted run left for these outputs.
    """
    taken = clashes(found)
    settled, todo = [], []
    for i, f in shard(list(enumerate(found)), rank, world):
        output = out / f"{output_name(f.relative)}.safetensors"
        if i in taken:
            other = found[taken[i]]
            settled.append(Outcome(f.path, output, "error", reason=(
                f"its output name {output.name!r} is also that of {other.path} in this run (both are "
                f"{output_name(f.relative)!r} relative to their inputs); pass their common parent folder as the "
                f"input so that names include the subfolders, or extract them into different --out folders")))
            continue
        for leftover in temporary_files(output, stale_only=True) + temporary_files(output.with_suffix(".png"),
                                                                                   stale_only=True):
            leftover.unlink(missing_ok=True)
        try:
            decision = decide(f.path, output, settings, overwrite=overwrite)
        except Exception as e:  # e.g. an output that cannot be read: this video only
            decision = Decision("error", f"{type(e).__name__}: {e}")
        if decision.action == "keep":
            settled.append(Outcome(f.path, output, "skipped-existing", shape=decision.shape))
        elif decision.action == "error":
            settled.append(Outcome(f.path, output, "error", reason=decision.why))
        else:
            todo.append((f.path, output, decision.why))
    return settled, todo
