"""`vlm-vision demo MODEL`: a local web page to ask a model questions about a video.

    vlm-vision demo runs/stage2/final                 # http://127.0.0.1:7860, the bundled videos (tests/data)
    vlm-vision demo runs/stage2/final --videos clips/ --port 8000 --max-upload-mb 2000

Pick a bundled video or upload one, see the frames the model samples and the prompt's token
budget, change the frame count, fps and the time instruction, ask, and read the answer as it is
generated. It listens on 127.0.0.1 (this machine only) unless `--host` says otherwise; Ctrl-C (or
SIGTERM) stops it and deletes the uploads. See `vlm_vision.evaluation.demo_server` for the routes and why it
uses no web framework.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from vlm_vision.commands.errors import InputError
from vlm_vision.commands.config_flags import config_from_flags
from vlm_vision.commands.input_checks import check_folder, check_model_folder

__all__ = ["DemoConfig", "check_demo_paths", "serve_demo"]

BUNDLED = Path(__file__).resolve().parents[2] / "tests" / "data"  # the real videos the repository ships


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """One demo server; `vlm-vision demo` takes each field as a flag."""

    model: str
    """Any model folder `vlm-vision eval` loads."""
    host: str = "127.0.0.1"
    """Address to listen on (127.0.0.1: this machine only)."""
    port: int = 7860
    """Port (0: any free one; the URL is printed)."""
    videos: tuple[str, ...] = ()
    """Folders of videos to choose from (default: the repository's tests/data/)."""
    max_upload_mb: float = 500.0
    """Largest upload, in megabytes."""
    max_upload_minutes: float = 120.0
    """Longest uploaded video, in minutes."""
    num_frames: int | None = None
    """Default frame count on the page (default: the model's)."""
    fps: float | None = None
    """Default frames per second on the page (default: the model's; none: a fixed count)."""
    max_new_tokens: int = 128
    """Longest answer, in tokens."""
    device: str | None = None
    """Where the model runs (default: cuda when available, else cpu)."""
    dtype: str = "auto"
    """float32, bfloat16 or float16; auto: bfloat16 on a GPU, float32 on the CPU."""

    def __post_init__(self) -> None:
        """Refuse a value no server can have (`ValueError` naming the field; the CLI names its flag)."""
        object.__setattr__(self, "videos", tuple(self.videos))
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be a TCP port from 0 to 65535, got {self.port!r}")
        for name in ("max_upload_mb", "max_upload_minutes", "max_new_tokens", "num_frames", "fps"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")


def _video_dirs(config: DemoConfig) -> list[Path]:
    """The folders of videos to offer (`--videos`, else the bundled tests/data/).

    Raises:
        InputError: a --videos folder that does not exist or is a file.
    """
    folders = [Path(v) for v in config.videos] or ([BUNDLED] if BUNDLED.is_dir() else [])
    for folder in config.videos:
        check_folder(folder, "--videos", "a folder of videos")
    return folders


def check_demo_paths(config: DemoConfig) -> list[Path]:
    """Check MODEL (and the weights a trained folder names) and --videos before torch loads; the video folders.

    Raises:
        InputError: the model folder or its weights are not on this machine, or a --videos folder is missing.
    """
    check_model_folder(config.model, "MODEL")
    return _video_dirs(config)


def serve_demo(config: DemoConfig, ready: Any = print) -> int:
    """Load the model and serve the page until SIGINT or SIGTERM; 0 once stopped by SIGTERM.

    Either signal shuts the server down and deletes the uploads; after SIGINT (Ctrl-C) it raises
    `KeyboardInterrupt`, so the command exits 130 as every command does.

    `ready` is called with the page's URL once the server listens.
    """
    folders = check_demo_paths(config)  # before torch and the model load
    import torch  # lazy: the model, for a run only

    from vlm_vision.evaluation.demo_model import DemoModel  # lazy: torch and transformers
    from vlm_vision.evaluation.demo_server import DemoLimits, DemoState, make_server  # lazy: as DemoModel

    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, config.dtype if config.dtype != "auto" else
                    ("bfloat16" if device.type == "cuda" else "float32"))
    try:
        model = DemoModel(config.model, device=device, dtype=dtype, max_new_tokens=config.max_new_tokens)
    except (ValueError, OSError) as e:  # eval_model's refusals of a folder it cannot load
        raise InputError("cannot load the model", config.model, f"a model folder `vlm-vision eval` loads ({e})") from e
    limits = DemoLimits(max_bytes=int(config.max_upload_mb * 1e6), max_seconds=config.max_upload_minutes * 60)
    state = DemoState(model, folders, limits, model.default_sampling(config.num_frames, config.fps))
    try:
        server = make_server(state, config.host, config.port)
    except OSError as e:
        state.close()
        raise InputError("cannot listen", f"{config.host}:{config.port}", f"a free address and port ({e})") from e

    stopped_by: list[int] = []

    def stop(signum: int, frame: Any) -> None:
        stopped_by.append(signum)
        threading.Thread(target=server.shutdown, daemon=True).start()  # shutdown waits for serve_forever

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    host, port = server.server_address[:2]
    ready(f"vlm-vision demo: {config.model} on http://{host}:{port}/ ({len(state.bundled)} bundled videos; "
          f"Ctrl-C stops)")
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        state.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
    print("vlm-vision demo: stopped (uploads deleted)", flush=True)
    if signal.SIGINT in stopped_by:  # Ctrl-C: exit 130 like every command (vlm_vision.commands.main prints the line)
        raise KeyboardInterrupt
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL and one flag per `DemoConfig` field."""
    parser.add_argument("model", metavar="MODEL", help="a model folder `vlm-vision eval` loads")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860; 0: a free one)")
    parser.add_argument("--videos", action="append", default=[], metavar="DIR",
                        help="a folder of videos to choose from (repeatable; default: the bundled tests/data/)")
    parser.add_argument("--max-upload-mb", type=float, default=500.0, help="largest upload in MB (default 500)")
    parser.add_argument("--max-upload-minutes", type=float, default=120.0,
                        help="longest uploaded video in minutes (default 120)")
    parser.add_argument("--num-frames", type=int, help="default frame count (default: the model's)")
    parser.add_argument("--fps", type=float, help="default frames per second (default: the model's)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="longest answer in tokens (default 128)")
    parser.add_argument("--device", help="cuda, cpu, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))


def run(args: argparse.Namespace) -> int:
    """Serve the demo until stopped (flags checked by `DemoConfig`, paths by `check_demo_paths`: exit 2)."""
    return serve_demo(config_from_flags(args, DemoConfig))
