"""decord, on request: a file read the way LLaVA-NeXT-Video's own loader reads it.

Some users need the very pixels LLaVA-NeXT-Video's loader gives, right or wrong (to reproduce a
model's evaluation, or to feed it the frames it was trained on): `decord.VideoReader(path,
ctx=cpu(0))` and one `get_batch`. decord is imported the first time a file is opened that way,
never before, and it runs in the decoder process (`video.decoder_process`) for the same reason
PyAV does: its hangs and crashes must cost the parent an error, not its life. Before decord
decodes, the exact decoder checks that the last frame asked for exists (`DecordVideo.check`),
because decord asked for a frame past the frames that really decode returns another frame's
pixels or never returns (dmlc/decord#373).

decord is optional: it publishes wheels for Linux x86-64 (and Windows) only, so `pip install
vlm-vision` brings it on Linux x86-64 alone (an environment marker; elsewhere the `[decord]` extra
or a build from source). Without it everything works but this backend, which then raises
`DecordNotInstalled` (an ImportError saying how to get decord) before any file is opened.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

from video.exact_decoder import FewerFrames, Video, header_frames

__all__ = ["DECORD_INSTALL", "DECORD_THREADS", "DecordError", "DecordNotInstalled", "DecordVideo", "missing_decord",
           "require_decord"]

DECORD_INSTALL = ("pip install 'vlm-vision[decord]' (decord publishes wheels for Linux x86-64 only, where a plain "
                  "`pip install vlm-vision` already includes it; elsewhere build decord from source), or use the "
                  "default backend 'exact' (PyAV), which decodes on every platform")


class DecordError(Exception):
    """decord refused the file or failed while decoding it; the message is what decord said."""


class DecordNotInstalled(ImportError):
    """The decord backend was asked for, and decord cannot be imported here; the message says how to get it."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or missing_decord(), name="decord")


def missing_decord(detail: str | None = None) -> str:
    """The message of DecordNotInstalled: what is missing (with `detail`, why) and how to get it."""
    why = f" ({detail})" if detail else ""
    return f"the decord backend needs the decord package, which is not installed{why}: {DECORD_INSTALL}"


def require_decord() -> None:
    """Return when decord is installed; raise DecordNotInstalled otherwise (decord itself is not imported)."""
    if importlib.util.find_spec("decord") is None:
        raise DecordNotInstalled()


DECORD_THREADS = 0  # 0: decord chooses, as in LLaVA-NeXT-Video v1's loader; the pixels do not depend on it


class DecordVideo:
    """One file read the way LLaVA-NeXT-Video reads it: `decord.VideoReader` and one `get_batch`.

    Frame counts, rates and keyframes are decord's own. Its pixels are not checked: returning them
    as decord gives them is the point. What is checked, with the exact decoder, is that the last
    frame asked for exists (`check`).
    """

    def __init__(self, path: str):
        try:
            import decord  # lazy: decord is imported the first time a file is opened with it, never otherwise
        except ImportError as error:  # missing, or installed but unloadable (a missing shared library)
            raise DecordNotInstalled(missing_decord(f"{type(error).__name__}: {error}")) from error

        self.path = path
        self.errors = (RuntimeError, decord.DECORDError)  # what decord raises: both become DecordError
        self.reader = _decord_call(self.errors, "cannot read it as a video", decord.VideoReader, path,
                                   ctx=decord.cpu(0), num_threads=DECORD_THREADS)
        self.num_frames = len(self.reader)
        self.fps = float(self.reader.get_avg_fps())
        self.declared_frames = header_frames(path)  # decord counts the packets it can read
        self.keyframes = [int(k) for k in self.reader.get_key_indices()]
        self._exact: Video | None = None

    def check(self, index: int) -> None:
        """Return when frame `index` decodes; raise FewerFrames(n) when only n frames do.

        "Decodes" as the exact decoder defines it. It decodes from the keyframe before `index`,
        about one keyframe interval, a fraction of what `get_batch` costs; but from the first frame
        on files whose timestamps the exact decoder cannot seek by (box.mp4).
        """
        if self._exact is None:
            self._exact = Video(self.path)
        exact = self._exact
        last = min(index, exact.num_frames - 1)  # decord also counts packets FFmpeg discards (box.mp4)
        for _ in exact.exact([last]):
            pass
        if last < index:
            raise FewerFrames(exact.num_frames)

    def frames(self, indices: list[int]) -> Iterator[tuple[int, object]]:
        """Yield (k, uint8[H, W, 3]) for `indices`, from one `get_batch` call; closes the reader."""
        reader, self.reader = self.reader, None
        if reader is None:
            raise ValueError(f"{self.path}: decord's reader was already used and closed; open the file again")
        try:
            batch = _decord_call(self.errors, "failed in get_batch", reader.get_batch, indices)
            batch = batch.asnumpy()  # (T, H, W, 3)
        except DecordError as error:
            if "size must exactly match" in str(error):  # decord's batch copy fails on a quarter turn
                raise DecordError("decord's get_batch cannot read a video whose container rotates it a quarter "
                                  "turn (a phone's portrait video), and so neither can LLaVA-NeXT-Video's loader; "
                                  "the exact backend returns its frames upright") from error
            raise
        reader.seek(0)  # decord keeps decoded buffers until a seek (dmlc/decord#208); LLaVA-NeXT does the same
        del reader
        yield from enumerate(batch)


def _decord_call(errors: tuple[type[Exception], ...], what: str, function, *args, **kwargs):
    """`function(*args, **kwargs)`, with decord's `errors` as DecordError naming `what` failed."""
    try:
        return function(*args, **kwargs)
    except errors as error:  # the parent gets the reason
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise DecordError(f"decord {what} ({type(error).__name__}: {first_line})") from error
