"""The decoder process's wire (`video.decoder_wire`): length-prefixed JSON, read back as the same
values; a pickle is refused unread, so a hostile reply runs no code."""

from __future__ import annotations

import pathlib
import pickle
import socket

import pytest

from video import decoder_wire as wire


class _Pwned:
    """Unpickling this runs `pathlib.Path(marker).touch()`: what a hostile worker could send."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path(self.marker).touch, ()


def _crafted_reply(marker: pathlib.Path) -> bytes:
    payload = pickle.dumps(("meta", _Pwned(str(marker))))
    return len(payload).to_bytes(8, "big") + payload  # the length prefix the protocol uses


def test_a_pickled_reply_is_refused_and_never_run(tmp_path):
    """The parent's reader gets a reply crafted to run code when unpickled: it raises, nothing ran."""
    marker = tmp_path / "code-ran"
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(_crafted_reply(marker))
        with pytest.raises(ValueError, match="not JSON"):
            wire.recv_message(ours)
    assert not marker.exists()
    assert not (pathlib.Path.cwd() / "code-ran").exists()


def test_worker_messages_are_json():
    """What the worker sends is plain JSON: a frame header reads back as the same values."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        wire.send_message(theirs, ("frame", 3, (48, 64, 3), 0.125))
        assert wire.recv_message(ours) == ("frame", 3, [48, 64, 3], 0.125)
