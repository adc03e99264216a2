"""`vlm-vision report`: its flags, the checks of its paths, and the call into `vlm_vision.evaluation.report`."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from vlm_vision.commands.config_flags import config_from_flags
from vlm_vision.commands.input_checks import check_folder, check_output_file
from vlm_vision.evaluation.report import EVAL_DIR_EXPECTED, ReportConfig, report_path, write_report

__all__ = ["add_arguments", "check_report_paths", "run"]

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ReportConfig)}  # the flags' defaults, written once there


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`vlm-vision report EVAL_DIR [--compare OTHER] [--output PAGE] ...`."""
    parser.add_argument("eval_dir", metavar="EVAL_DIR", help="a `vlm-vision eval` output folder")
    parser.add_argument("--compare", metavar="OTHER_EVAL_DIR", help="a second eval folder: show where they disagree")
    parser.add_argument("--output", metavar="PAGE", help="where to write the page (default: EVAL_DIR/report.html)")
    parser.add_argument("--thumb-height", type=int, default=_DEFAULTS["thumb_height"],
                        help=f"thumbnail height in pixels (default {_DEFAULTS['thumb_height']})")
    parser.add_argument("--jpeg-quality", type=int, default=_DEFAULTS["jpeg_quality"],
                        help=f"thumbnail JPEG quality, 1-95 (default {_DEFAULTS['jpeg_quality']})")
    parser.add_argument("--page-size", type=int, default=_DEFAULTS["page_size"],
                        help=f"questions per page (default {_DEFAULTS['page_size']})")
    # (values are checked by ReportConfig; `config_from_flags` names the flag of a refused one)
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def check_report_paths(config: ReportConfig) -> Path:
    """Check the folders to read and the page to write before any work; returns the page's path.

    Raises:
        InputError: EVAL_DIR or --compare missing or not a folder, or the page an existing folder or not
            writable here.
    """
    check_folder(config.eval_dir, "EVAL_DIR", EVAL_DIR_EXPECTED)
    check_folder(config.compare, "--compare", EVAL_DIR_EXPECTED)
    path = report_path(config)
    check_output_file(path, "--output" if config.output else "--output (default)")
    return path


def run(args: argparse.Namespace) -> int:
    """Write the report; 0 on success (bad input raises `InputError`: exit 2)."""
    config = config_from_flags(args, ReportConfig)
    check_report_paths(config)
    path = write_report(config)
    print(f"report: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
