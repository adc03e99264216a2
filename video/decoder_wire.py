"""The decoder process's wire protocol: length-prefixed JSON messages over one stream socket.

The parent (`video.decode`) and the decoder process (`video.decoder_process`) speak it, one
request at a time. Messages are length-prefixed JSON arrays (`send_message` / `recv_message`);
frame pixels follow their header as raw bytes (`recv_into`), so the parent receives them straight
into the output array. Nothing is unpickled on either side: the decoder process parses untrusted
media, and a reply must never be able to make the parent run code. A message that is not a JSON
array of plain values starting with its kind (a pickle, say) is refused with `ValueError`.

This module is imported by the decoder process too, which never imports torch: standard library only.
"""

from __future__ import annotations

import json
import socket
import struct

__all__ = ["recv_into", "recv_message", "send_message"]

_HEADER = struct.Struct("!Q")
_MAX_MESSAGE = 1 << 26  # 64 MiB: far above any header or frame-index list; a longer length is garbage


def send_message(sock: socket.socket, message: tuple | list) -> None:
    """Send one message, a tuple of JSON values, prefixed by its length."""
    data = json.dumps(message, allow_nan=True).encode("utf-8")
    sock.sendall(_HEADER.pack(len(data)) + data)


def recv_into(sock: socket.socket, view: memoryview) -> None:
    """Fill `view` from the socket; EOFError if the other side closes first."""
    while view.nbytes:
        received = sock.recv_into(view)
        if not received:
            raise EOFError("the other end of the decoder socket closed")
        view = view[received:]


def recv_message(sock: socket.socket) -> tuple:
    """Receive one message sent by `send_message`, as a tuple.

    Raises:
        ValueError: the bytes are not a length-prefixed JSON array (e.g. a pickle), or the length
            is implausible; the conversation cannot go on.
    """
    header = bytearray(_HEADER.size)
    recv_into(sock, memoryview(header))
    size = _HEADER.unpack(header)[0]
    if size > _MAX_MESSAGE:
        raise ValueError(f"decoder message of {size} bytes announced, more than {_MAX_MESSAGE}: not our protocol")
    data = bytearray(size)
    recv_into(sock, memoryview(data))
    try:
        message = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"decoder message is not JSON ({error}); first bytes {bytes(data[:16])!r}") from None
    if not isinstance(message, list) or not message or not isinstance(message[0], str):
        raise ValueError(f"decoder message is not a list starting with its kind: {str(message)[:80]}")
    return tuple(message)
