"""pyproject.toml as the dependency tests read it: the runtime requirements, the extras, and the
import names each distribution provides."""

from __future__ import annotations

import pathlib
import re

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip's vendored copy of the same parser
    from pip._vendor import tomli as tomllib

from pip._vendor.packaging.requirements import Requirement

REPO = pathlib.Path(__file__).resolve().parents[1]

# The import name of every distribution whose import name is not its own name with "-" as "_"
# (PEP 503 normalized, lower case). Add a line here when a dependency is added whose import name
# differs (a test fails naming the import until then).
IMPORT_NAMES: dict[str, str] = {
    "pillow": "PIL",
    "pyyaml": "yaml",
    "scikit-image": "skimage",
    "opencv-python": "cv2",
    "opencv-python-headless": "cv2",
    "beautifulsoup4": "bs4",
    "python-dateutil": "dateutil",
}


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them (Pillow == pillow, PyYAML == pyyaml, a_b == a-b)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def import_name(distribution: str) -> str:
    """The top-level module a distribution provides: `IMPORT_NAMES`, else its name with "_" for "-"."""
    name = normalize(distribution)
    return IMPORT_NAMES.get(name, name.replace("-", "_"))


def project() -> dict:
    """The [project] table of pyproject.toml."""
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def runtime_requirements() -> list[str]:
    """`dependencies`, as written (markers included)."""
    return list(project()["dependencies"])


def extras() -> dict[str, list[str]]:
    """`optional-dependencies`: extra name -> its requirements."""
    return {name: list(reqs) for name, reqs in project().get("optional-dependencies", {}).items()}


def distribution(requirement: str) -> str:
    """The normalized distribution name of a requirement string."""
    return normalize(Requirement(requirement).name)


def lower_bound(requirement: str) -> str | None:
    """The version after `>=` in a requirement, None when it has none."""
    bounds = [spec.version for spec in Requirement(requirement).specifier if spec.operator == ">="]
    return bounds[0] if len(bounds) == 1 else None
