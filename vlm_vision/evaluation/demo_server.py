"""The web server of `vlm-vision demo`: Python's own `http.server`, one page and a small JSON API.

Routes:

    GET  /                 the page (vlm_vision/evaluation/demo_page.html)
    GET  /api/info         bundled videos, uploads, default sampling, upload limits
    POST /api/upload?name= the raw file as the body; checked (size, decodes as video, duration) and kept
    POST /api/frames       {"video", "num_frames", "fps", "time_instruction"} -> frames and token budget
    POST /api/ask          the same and "question" -> the answer, streamed (chunked text/plain)
    GET  /uploads/ID       an uploaded video (the only files served)

Why no framework: Gradio (what this field's demos use) pins pillow<13 in every release that installs
here, and would move the core install's pillow, huggingface_hub or pydantic (see docs/report-demo.md, "Why no Gradio");
the standard library serves one page and a token stream in a few lines, with nothing to install.

Bad requests get `{"error": "..."}` with status 400 (413 for a too-large upload), and the page shows
the message. A video is named by its key: "bundled/N/NAME" (a file of the Nth --videos folder) or
"upload/ID"; a key is looked up, never joined to a path.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import shutil
import tempfile
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from vlm_vision.errors import InputError

__all__ = ["DemoLimits", "DemoState", "make_server"]

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")
CHUNK = 1 << 20
DRAIN_BYTES = 64 << 20  # a refused body up to this size is read and dropped, so the client sees the 413


@dataclasses.dataclass(frozen=True)
class DemoLimits:
    """Upload limits: size in bytes, duration in seconds."""

    max_bytes: int = 500 * 1000 * 1000
    max_seconds: float = 2 * 3600.0


class DemoState:
    """What the server holds: the model, the bundled videos, the uploads (in a temporary folder) and the limits."""

    def __init__(self, model: Any, video_dirs: list[Path], limits: DemoLimits, default: Any) -> None:
        self.model, self.limits, self.default = model, limits, default
        self.bundled = {f"bundled/{n}/{p.name}": p for n, folder in enumerate(video_dirs)
                        for p in sorted(folder.iterdir()) if p.suffix.lower() in VIDEO_SUFFIXES}
        self.labels = {key: f"{video_dirs[int(key.split('/')[1])].name}/{p.name}" for key, p in self.bundled.items()}
        self.upload_dir = Path(tempfile.mkdtemp(prefix="vlm-vision-demo-"))
        self.uploads: dict[str, tuple[Path, str]] = {}

    def video(self, key: str) -> Path:
        """The file of a video key.

        Raises:
            InputError: no such video.
        """
        if key in self.bundled:
            return self.bundled[key]
        if key.startswith("upload/") and key[7:] in self.uploads:
            return self.uploads[key[7:]][0]
        raise InputError("no such video", key, "a bundled video or an upload of this session")

    def info(self) -> dict[str, Any]:
        """The page's start-up facts."""
        videos = [{"key": k, "label": self.labels[k]} for k in self.bundled]
        videos += [{"key": f"upload/{i}", "label": f"upload: {name}"} for i, (_, name) in self.uploads.items()]
        return {"videos": videos, "default": dataclasses.asdict(self.default),
                "limits": {"max_bytes": self.limits.max_bytes, "max_seconds": self.limits.max_seconds}}

    def close(self) -> None:
        """Delete the uploads."""
        shutil.rmtree(self.upload_dir, ignore_errors=True)


def _safe_name(name: str) -> str:
    """A file name that is only letters, digits, dots, dashes and underscores."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name)[-80:]
    return name or "upload"


class DemoHandler(BaseHTTPRequestHandler):
    """One request; `state` is set on the subclass `make_server` builds."""

    state: DemoState
    protocol_version = "HTTP/1.1"  # keep-alive and chunked streams
    server_version = "vlm-vision-demo"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # quiet: the terminal shows the URL and errors only

    # ----- replies -----

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, data: Any, status: int = 200) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _error(self, message: str, status: int = 400) -> None:
        self._json({"error": message}, status)

    def _body_json(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            data = json.loads(self.rfile.read(length) or b"{}")
        except ValueError as e:
            raise InputError("request is not JSON", self.path, "a JSON object") from e
        if not isinstance(data, dict):
            raise InputError("request is not a JSON object", self.path, "a JSON object")
        return data

    # ----- routes -----

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = urlparse(self.path).path
        if path == "/":
            page = resources.files("vlm_vision.evaluation").joinpath("demo_page.html").read_bytes()
            return self._send(200, page, "text/html; charset=utf-8")
        if path == "/api/info":
            return self._json(self.state.info())
        if path.startswith("/uploads/") and path[9:] in self.state.uploads:
            file, _ = self.state.uploads[path[9:]]
            return self._send(200, file.read_bytes(), "video/mp4")
        self._error(f"no such page: {path}", 404)

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        from vlm_vision.evaluation.demo_model import Sampling  # lazy: torch and the model, not needed to route

        path = urlparse(self.path).path
        try:
            if path == "/api/upload":
                return self._upload()
            if path not in ("/api/frames", "/api/ask"):
                return self._error(f"no such action: {path}", 404)
            body = self._body_json()
            video = self.state.video(str(body.get("video", "")))
            sampling = Sampling.from_request(body, self.state.default)
            if path == "/api/frames":
                return self._json(self.state.model.look(video, sampling))
            question = str(body.get("question", "")).strip()
            if not question:
                raise InputError("empty question", "question", "a question about the video")
            self._stream(self.state.model.ask(video, question, sampling))
        except InputError as e:
            self._error(e.message())
        except Exception as e:  # noqa: BLE001 - a bug or an unreadable bundled video: on the page, and its traceback here
            traceback.print_exc()
            self._error(f"{type(e).__name__}: {e}", 500)

    def _upload(self) -> None:
        """Keep the body as an upload when it is a video within the limits; else say why on the page."""
        from vlm_vision.evaluation.demo_model import check_video  # lazy: the decoder, for uploads only

        name = _safe_name(parse_qs(urlparse(self.path).query).get("name", ["upload"])[0])
        length = int(self.headers.get("Content-Length") or 0)
        limit = self.state.limits.max_bytes
        if length > limit:
            self.close_connection = True
            if length <= DRAIN_BYTES:  # answering before the body is read would break the client's send (EPIPE)
                _drain(self.rfile, length)
            return self._error(f"{name} is {length / 1e6:.1f} MB; uploads may be at most {limit / 1e6:g} MB", 413)
        upload_id = secrets.token_hex(8)
        target = self.state.upload_dir / f"{upload_id}-{name}"
        with target.open("wb") as f:
            left = length
            while left > 0:
                chunk = self.rfile.read(min(CHUNK, left))
                if not chunk:
                    break
                f.write(chunk)
                left -= len(chunk)
        try:
            if left:
                raise InputError("upload cut short", name, f"{length} bytes; {length - left} arrived")
            duration = check_video(target, self.state.limits.max_seconds, name)
        except InputError as e:
            target.unlink(missing_ok=True)
            return self._error(f"{name}: {e.what}: {e.expected}")
        self.state.uploads[upload_id] = (target, name)
        self._json({"video": f"upload/{upload_id}", "label": f"upload: {name}", "duration": duration,
                    "url": f"/uploads/{upload_id}"})

    def _stream(self, pieces: Any) -> None:
        """Send text pieces as they come (chunked transfer); a failure mid-answer ends it with a message."""
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()

        def chunk(text: str) -> None:
            data = text.encode()
            if data:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

        try:
            for piece in pieces:
                chunk(piece)
        except (InputError, RuntimeError) as e:
            chunk(f"\n[error: {e}]")
        self.wfile.write(b"0\r\n\r\n")


def make_server(state: DemoState, host: str, port: int) -> ThreadingHTTPServer:
    """A threading HTTP server for `state` on host:port (port 0: a free one; see `server.server_address`)."""
    handler = type("BoundDemoHandler", (DemoHandler,), {"state": state})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def _drain(stream: Any, length: int) -> None:
    """Read and drop `length` bytes of a request body (or until the client stops sending)."""
    while length > 0:
        chunk = stream.read(min(CHUNK, length))
        if not chunk:
            return
        length -= len(chunk)
