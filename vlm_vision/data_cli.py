"""`vlm-vision convert-data`: any accepted training-data shape -> one LLaVA JSON list.

    vlm-vision convert-data mixture.yaml --output llava.json
    vlm-vision convert-data chat_messages.jsonl --output llava.json --video-placeholder "<video>"
"""

from __future__ import annotations

import argparse
import json

from vlm_vision.data_formats import convert_to_llava, record_origin


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `vlm-vision convert-data`."""
    parser.add_argument("data", help="a .json/.jsonl file, a prefix{a,b}.json pattern or a LLaVA-NeXT .yaml mixture")
    parser.add_argument("--output", required=True, help="the LLaVA JSON file to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of a mixture's random:N sampling")
    parser.add_argument("--video-placeholder", default="<image>", choices=("<image>", "<video>"),
                        help="placeholder written in video records (LLaVA-NeXT's code reads <image>)")
    parser.add_argument("--skipped", help="also write the records left out, one JSON line each")


def run(args: argparse.Namespace) -> int:
    """Convert; 0 on success, 1 when every record was left out, 2 for a data spec that cannot be read."""
    try:
        written, skipped = convert_to_llava(args.data, args.output, seed=args.seed,
                                            video_placeholder=args.video_placeholder)
    except (OSError, ValueError) as e:
        print(f"vlm-vision convert-data: {e}")
        return 2
    for s in skipped[:10]:
        print(f"left out {s.id} ({s.source}): {s.reason}")
    if args.skipped:
        with open(args.skipped, "w", encoding="utf-8") as f:
            for s in skipped:
                f.write(json.dumps({**record_origin(s), "reason": s.reason}) + "\n")
    print(f"wrote {written} records to {args.output}; {len(skipped)} left out")
    return 1 if skipped and not written else 0
