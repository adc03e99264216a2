"""`vlm-vision convert-data`: any accepted training-data shape -> one LLaVA JSON list.

    vlm-vision convert-data mixture.yaml --output llava.json
    vlm-vision convert-data chat_messages.jsonl --output llava.json --video-placeholder "<video>"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from video.atomic_files import write_atomic
from vlm_vision.data.formats import convert_to_llava, record_origin
from vlm_vision.commands.input_checks import check_data_spec, check_output_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `vlm-vision convert-data`."""
    parser.add_argument("data", help="a .json/.jsonl file, a prefix{a,b}.json pattern or a LLaVA-NeXT .yaml mixture")
    parser.add_argument("--output", required=True, help="the LLaVA JSON file to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of a mixture's random:N sampling")
    parser.add_argument("--video-placeholder", default="<image>", choices=("<image>", "<video>"),
                        help="placeholder written in video records (LLaVA-NeXT's code reads <image>)")
    parser.add_argument("--skipped", help="also write the records left out, one JSON line each")


def run(args: argparse.Namespace) -> int:
    """Convert; 0 on success, 1 when every record was left out.

    Both files are written atomically: an interrupted run leaves neither half-written.

    Raises:
        InputError: for a data spec that cannot be read, or an output that cannot be written.
    """
    check_output_file(args.output, "--output")
    if args.skipped:
        check_output_file(args.skipped, "--skipped")
    check_data_spec(args.data, "DATA")
    print(f"vlm-vision convert-data: reading {args.data}", file=sys.stderr)
    written, skipped = convert_to_llava(args.data, args.output, seed=args.seed,
                                        video_placeholder=args.video_placeholder)
    for s in skipped[:10]:
        print(f"left out {s.id} ({s.source}): {s.reason}")
    if args.skipped:
        lines = "".join(json.dumps({**record_origin(s), "reason": s.reason}) + "\n" for s in skipped)
        write_atomic(Path(args.skipped), lines.encode("utf-8"))
    print(f"wrote {written} records to {args.output}; {len(skipped)} left out")
    return 1 if skipped and not written else 0
