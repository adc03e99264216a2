"""The short summary at the end of `benchmarks/gpu_check.sh`: tests, then each figure against its target.

Reads what the check wrote into one folder (pytest.txt, tower_b256.json, tower_b32.json,
train.json, preprocess.json); a missing file is reported as missing, never filled in.

    python benchmarks/gpu_summary.py out
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re

# path name in bench_tower.py's JSON -> label
TOWER_PATHS = {"ours": "ours", "ours_compiled": "ours, torch.compile", "ours_fp8": "ours, FP8",
               "ours_fp8_compiled": "ours, FP8 + compile", "ours_compiled_reduce-overhead": "ours, CUDA graphs"}
TRAIN_PATHS = {"ours": "ours", "ours_cached": "ours, cached tokens"}
STOPPED = "NOT MEASURED (the stage stopped first; see log.txt)"


def rate(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def tower_paths(cfg: dict) -> list[str]:
    """The paths bench_tower.py was asked for, as it names them."""
    names = ["ours"] + (["ours_compiled"] if cfg["compile"] else [])
    names += [f"ours_compiled_{cfg['compile_mode']}"] if cfg["compile_mode"] else []
    return names + (["ours_fp8"] + (["ours_fp8_compiled"] if cfg["compile"] else []) if cfg["fp8"] else [])


def pytest_lines(path: pathlib.Path) -> list[str]:
    """The outcome line, failures by name, and every `measured` line the tests printed."""
    if not path.exists():
        return [f"pytest: {path.name} missing (stage not run or killed)"]
    text = path.read_text(errors="replace").splitlines()
    outcome = next((line.strip("= ") for line in reversed(text) if re.search(r"\d+ (passed|failed|error|skipped)", line)),
                   "no outcome line (killed?)")
    lines = [f"pytest -m gpu: {outcome}"]
    lines += [f"  {line}" for line in text if line.startswith(("FAILED", "ERROR"))]
    lines += [f"  {line.strip()}" for line in text if line.strip().startswith("measured ")]
    return lines


def tower_lines(path: pathlib.Path) -> list[str]:
    if not path.exists():
        return [f"tower: {path.name} missing"]
    data = json.loads(path.read_text())
    cfg = data["config"]
    return compared_lines(f"tower {cfg['variant']} batch {cfg['batch']} {cfg['device']} {cfg['dtype']}",
                          data["results"], {name: TOWER_PATHS[name] for name in tower_paths(cfg)},
                          unit="images", memory_target="0.5x",
                          detail=lambda r: f"token cosine mean {r['mean_token_cosine']:.5f}")


def train_lines(path: pathlib.Path) -> list[str]:
    if not path.exists():
        return [f"train: {path.name} missing"]
    data = json.loads(path.read_text())
    cfg, res = data["config"], data["results"]
    sequence = res.get("ref", {}).get("sequence", "?")
    return compared_lines(f"train step {cfg['preset']} {cfg['device']} {cfg['dtype']} (sequence {sequence})", res,
                          TRAIN_PATHS, unit="tokens", memory_target="1x",
                          detail=lambda r: f"first loss {r['first_loss']:.4f}")


def compared_lines(head: str, results: dict, paths: dict[str, str], *, unit: str, memory_target: str,
                   detail) -> list[str]:
    """The reference's line, then one per asked-for path: its speed and memory against the targets,
    FAILED, or not measured."""
    key = f"{unit}_per_s"
    ref = results.get("ref", {})
    if key not in ref:
        return [f"{head}: the reference FAILED or did not run"]
    lines = [f"{head}: reference {rate(ref[key])} {unit}/s, peak {ref['peak_mib']:.0f} MiB, {detail(ref)}"]
    for name, label in paths.items():
        r = results.get(name)
        if r is None:
            lines.append(f"  {label}: {STOPPED}")
        elif "speedup" not in r:
            lines.append(f"  {label}: FAILED (see log.txt)")
        else:
            lines.append(f"  {label}: {rate(r[key])} {unit}/s ({r['speedup']:.2f}x; target >= 1.5x), "
                         f"peak {r['peak_mib']:.0f} MiB ({r['memory_ratio']:.2f}x; target <= {memory_target}), "
                         f"{detail(r)}")
    return lines


def preprocess_lines(path: pathlib.Path) -> list[str]:
    if not path.exists():
        return [f"preprocess: {path.name} missing"]
    r = json.loads(path.read_text())
    copy = f", {r['ours_with_copy_ms']:.1f} ms with the host copy" if "ours_with_copy_ms" in r else ""
    return [f"preprocess {r['frames'][0]} frames on {r['device']}: {r['ours_ms']:.1f} ms{copy} "
            f"(PIL processor {r['reference_ms']:.0f} ms; max diff {r['max_abs_diff']:.4f})"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=pathlib.Path)
    folder = p.parse_args().folder
    lines = pytest_lines(folder / "pytest.txt")
    lines += tower_lines(folder / "tower_b256.json") + tower_lines(folder / "tower_b32.json")
    lines += train_lines(folder / "train.json") + preprocess_lines(folder / "preprocess.json")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
