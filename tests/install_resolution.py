"""What `pip install vlm-vision` would install on a platform and Python we do not run on, found
without installing anything: a resolver asked for wheels only, against the registry.

One cell is one (platform, Python) pair. `uv pip compile --python-platform P --python-version V
--only-binary :all: --format pylock.toml` resolves the runtime dependencies of pyproject.toml as
an installer on P with CPython V would, and lists the wheel it would download for every package.
Why uv and not `pip install --dry-run --platform ... --report`, which we tried first:

- pip evaluates environment markers (`; platform_machine == "x86_64"`, torch's CUDA wheels'
  markers) against the interpreter it runs in, not the target, so from this Linux x86-64 machine
  it would ask macOS for decord and CUDA; uv evaluates them for the target platform.
- pip 23.2 (what `python3 -m venv` brings here) downloads whole wheels to read their metadata:
  with torch's CUDA wheels (0.5 GB each, several while backtracking) the Linux cells took over
  15 minutes each; uv reads only the metadata, and a cell takes seconds.

The resolution is the one a user elsewhere gets: uv reads no pip configuration (this machine's
caps torch at what lies on its disk and adds local wheel folders), `--no-config` drops uv's own,
and no UV_* or PIP_* variable is passed on.

Targets: glibc 2.28 and newer Linux (RHEL/Rocky 8, Debian 10, Ubuntu 20.04 and newer; GH200 and
Graviton machines), and macOS 14 and newer on Apple silicon (torch has no macOS wheels for older).

A cell ends in one of: "ok" (every package has a wheel: versions in `packages`, wheel file names
in `wheels`), "missing" (no usable wheel: `culprit` names the package, as the resolver did),
"network" (the registry did not answer: nothing was checked, which is not a pass), or "error"
(anything else; the resolver's last lines in `detail`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from tests.project_metadata import normalize, tomllib

PYPI = "https://pypi.org/simple"
PYTHONS = ("3.10", "3.11", "3.12", "3.13")

# Words in the resolver's output that only a failing connection puts there.
NETWORK_SIGNS = ("Failed to fetch", "error sending request", "tcp connect error", "dns error",
                 "Connection refused", "Connection reset", "timed out", "Network is unreachable",
                 "failed to lookup address", "Could not connect", "client error (Connect)",
                 "HTTP status server error", "503 Service", "502 Bad Gateway", "504 Gateway")


@dataclasses.dataclass(frozen=True)
class Target:
    """A platform users install on: uv's name for it and the environment it needs."""

    name: str
    platform: str
    """uv's `--python-platform`."""
    environment: dict[str, str]
    """Extra environment variables (macOS: the oldest macOS version wheels must support)."""
    markers: dict[str, str]
    """PEP 508 environment markers of the platform (for `marker_environment`)."""


LINUX = {"sys_platform": "linux", "platform_system": "Linux", "os_name": "posix"}
TARGETS = {
    "linux-x86_64": Target("linux-x86_64", "x86_64-manylinux_2_28", {}, {**LINUX, "platform_machine": "x86_64"}),
    "linux-aarch64": Target("linux-aarch64", "aarch64-manylinux_2_28", {},
                            {**LINUX, "platform_machine": "aarch64"}),
    "macos-arm64": Target("macos-arm64", "aarch64-apple-darwin", {"MACOSX_DEPLOYMENT_TARGET": "14.0"},
                          {"sys_platform": "darwin", "platform_system": "Darwin", "os_name": "posix",
                           "platform_machine": "arm64"}),
}


@dataclasses.dataclass(frozen=True)
class Cell:
    """The resolver's answer for one target and Python version."""

    target: str
    python: str
    status: str
    """"ok", "missing", "network" or "error"."""
    packages: dict[str, str]
    """Distribution name (normalized) -> version, when "ok"."""
    wheels: dict[str, list[str]]
    """Distribution name (normalized) -> the file names of its wheels for the target, when "ok"."""
    culprit: str | None
    """With "missing": the package without a usable wheel (normalized), as the resolver named it."""
    detail: str
    seconds: float

    def line(self) -> str:
        """One line for a report: where, what, why."""
        where = f"{self.target} / Python {self.python}"
        if self.status == "ok":
            return f"{where}: ok, {len(self.packages)} packages, all wheels ({self.seconds:.1f} s)"
        if self.status == "missing":
            return f"{where}: no usable wheel of {self.culprit}: {self.detail}"
        return f"{where}: {self.status}: {self.detail}"


def marker_environment(target: Target, python: str) -> dict[str, str]:
    """The environment markers of CPython `python` on `target`."""
    return {"python_version": python, "python_full_version": f"{python}.0", "implementation_name": "cpython",
            "implementation_version": f"{python}.0", "platform_python_implementation": "CPython",
            **target.markers}


def uv_binary() -> str:
    """The uv executable: the one beside this Python (the `uv` wheel of the dev extra), else on PATH."""
    beside = os.path.join(sysconfig.get_path("scripts"), "uv")
    found = beside if os.path.exists(beside) else shutil.which("uv")
    if found is None:
        raise FileNotFoundError(f"uv is not installed for {sys.executable}: pip install -e '.[dev]' installs it")
    return found


def resolver_environment(target: Target) -> dict[str, str]:
    """This process's environment without pip's or uv's settings, plus the target's."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("PIP_", "UV_", "MACOSX_"))}
    return {**env, **target.environment}


def registry_answers(index_url: str = PYPI, timeout: float = 20.0) -> str | None:
    """None when the index serves a project page; else why not (one line)."""
    try:
        with urllib.request.urlopen(f"{index_url.rstrip('/')}/pip/", timeout=timeout) as response:
            response.read(1)
        return None
    except (urllib.error.URLError, OSError) as error:  # HTTPError, time-outs and refusals included
        return f"{index_url} does not answer ({type(error).__name__}: {error})"


def resolve(requirements: list[str], target: Target, python: str, *, index_url: str = PYPI,
            timeout: float = 600.0, retries: int = 3) -> Cell:
    """The install of `requirements` that CPython `python` on `target` would get, wheels only."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vlm-vision-resolve-") as scratch:
        wanted, lock = os.path.join(scratch, "requirements.in"), os.path.join(scratch, "pylock.toml")
        with open(wanted, "w") as f:
            f.write("\n".join(requirements) + "\n")
        command = [uv_binary(), "pip", "compile", wanted, "--python-platform", target.platform, "--python-version",
                   python, "--only-binary", ":all:", "--no-config", "--index-url", index_url, "--format",
                   "pylock.toml", "--output-file", lock, "--quiet", "--color", "never"]
        env = {**resolver_environment(target), "UV_HTTP_RETRIES": str(retries)}
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return Cell(target.name, python, "network", {}, {}, None,
                        f"no answer after {timeout:.0f} s (the registry too slow?)", time.perf_counter() - t0)
        seconds = time.perf_counter() - t0
        if done.returncode == 0:
            with open(lock, "rb") as f:
                return locked(target.name, python, tomllib.load(f), seconds)
    return classify(target.name, python, done.stdout + done.stderr, seconds)


def locked(target: str, python: str, lock: dict, seconds: float) -> Cell:
    """The Cell of a resolution that succeeded; "missing" still when a package came without a wheel."""
    packages = {normalize(p["name"]): p["version"] for p in lock.get("packages", [])}
    wheels = {normalize(p["name"]): [w["url"].rsplit("/", 1)[-1] for w in p.get("wheels", [])]
              for p in lock.get("packages", [])}
    bare = sorted(name for name, files in wheels.items() if not files)
    if bare:
        return Cell(target, python, "missing", {}, {}, bare[0], f"no wheel listed for {bare}", seconds)
    return Cell(target, python, "ok", packages, wheels, None, "", seconds)


def classify(target: str, python: str, output: str, seconds: float) -> Cell:
    """The Cell of a failed resolution from the resolver's output; a network failure comes first."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    if any(sign in output for sign in NETWORK_SIGNS):
        return Cell(target, python, "network", {}, {}, None, "the registry did not answer: " + " | ".join(lines[-3:]),
                    seconds)
    because = re.search(r"Because (?:you require |there (?:is|are) no versions? of |only )?([A-Za-z0-9][A-Za-z0-9._-]*)", output)
    hint = re.search(r"hint: .*?`([A-Za-z0-9][A-Za-z0-9._-]*)`", output)
    found = because or hint
    if found:
        reason = next((line for line in lines if line.startswith("cause:")), lines[-1])
        return Cell(target, python, "missing", {}, {}, normalize(found.group(1)), reason, seconds)
    return Cell(target, python, "error", {}, {}, None, " | ".join(lines[-4:]), seconds)


def resolve_matrix(requirements: list[str], targets: list[Target], pythons: tuple[str, ...] = PYTHONS, *,
                   index_url: str = PYPI, threads: int = 12) -> list[Cell]:
    """Every (target, Python) cell, `threads` resolvers at a time; all "network" when the index is down."""
    cells = [(target, python) for target in targets for python in pythons]
    down = registry_answers(index_url)
    if down:
        return [Cell(t.name, p, "network", {}, {}, None, down, 0.0) for t, p in cells]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(lambda cell: resolve(requirements, *cell, index_url=index_url), cells))
