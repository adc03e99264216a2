"""`pip install vlm-vision` resolves, wheels only, on every supported platform and Python: Linux
x86-64 and aarch64 (glibc 2.28+), macOS 14+ on Apple silicon, x CPython 3.10 to 3.13.

Resolved against the registry without installing (`tests/install_resolution.py` says how, and why
uv's resolver and not pip's). A cell that fails names the package without a usable wheel. When the
registry does not answer, the test neither passes nor blames a package: it is skipped with a
REGISTRY UNREACHABLE reason and a warning listing the cells left unchecked (both in pytest's summary),
and a resolution failure in the cells that did answer still fails it.
"""

from __future__ import annotations

import time
import warnings

import pytest
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.specifiers import SpecifierSet

from tests.install_resolution import (
    PYTHONS, TARGETS, Cell, classify, marker_environment, registry_answers, resolve, resolve_matrix,
)
from tests.project_metadata import distribution, project, runtime_requirements

pytestmark = pytest.mark.network


class RegistryUnreachable(UserWarning):
    """The package registry did not answer: the resolution was not checked (not a pass)."""


def outcome(cells: list[Cell]) -> None:
    """Fail on any cell that resolved wrong; then skip, loudly, when some could not be checked."""
    failed = [c for c in cells if c.status not in ("ok", "network")]
    unchecked = [c for c in cells if c.status == "network"]
    assert not failed, "\n".join(c.line() for c in failed + unchecked)
    if unchecked:
        message = (f"REGISTRY UNREACHABLE: {len(unchecked)} of {len(cells)} cells NOT checked: "
                   + "; ".join(c.line() for c in unchecked))
        warnings.warn(message, RegistryUnreachable, stacklevel=2)
        pytest.skip(message)


@pytest.fixture(scope="module")
def matrix() -> tuple[list[Cell], float]:
    t0 = time.perf_counter()
    cells = resolve_matrix(runtime_requirements(), list(TARGETS.values()))
    return cells, time.perf_counter() - t0


def test_every_runtime_dependency_has_a_wheel_everywhere(matrix):
    cells, seconds = matrix
    print(f"\n{len(cells)} cells resolved in {seconds:.1f} s:")
    for cell in cells:
        print(" ", cell.line())
    outcome(cells)
    for cell in cells:
        target = TARGETS[cell.target]
        expected = {distribution(r) for r in runtime_requirements()
                    if Requirement(r).marker is None or Requirement(r).marker.evaluate(marker_environment(target,
                                                                                                          cell.python))}
        assert expected <= set(cell.packages), (cell.line(), expected - set(cell.packages))
        assert ("decord" in cell.packages) == (cell.target == "linux-x86_64"), cell.line()
        assert all(files and all(f.endswith(".whl") for f in files) for files in cell.wheels.values()), cell.line()


def test_the_matrix_covers_the_supported_pythons():
    supported = SpecifierSet(project()["requires-python"])
    assert all(python in supported for python in PYTHONS)
    assert "3.9" not in supported
    classified = {c.rsplit(" :: ", 1)[-1] for c in project()["classifiers"] if c.startswith("Programming Language")}
    assert classified == set(PYTHONS)


def test_a_package_without_a_wheel_is_named():
    """decord asked for unconditionally on Linux aarch64: the cell fails and names decord."""
    if registry_answers():
        pytest.skip(f"REGISTRY UNREACHABLE: {registry_answers()}")
    cell = resolve(["numpy", "decord>=0.6.0"], TARGETS["linux-aarch64"], "3.12")
    if cell.status == "network":
        outcome([cell])
    assert (cell.status, cell.culprit) == ("missing", "decord"), cell.line()
    assert "no usable wheel of decord" in cell.line() and "aarch64" in cell.detail


def test_an_unreachable_registry_is_a_network_error_not_a_pass_nor_a_missing_package():
    """A registry that refuses connections (a closed port on this machine) is reported as such."""
    cell = resolve(["numpy"], TARGETS["linux-x86_64"], "3.12", index_url="http://127.0.0.1:9/simple", retries=0)
    assert cell.status == "network" and cell.culprit is None, cell.line()
    assert "did not answer" in cell.line()
    cells = resolve_matrix(["numpy"], [TARGETS["macos-arm64"]], ("3.12",), index_url="http://127.0.0.1:9/simple")
    assert [c.status for c in cells] == ["network"] and "does not answer" in cells[0].detail
    with pytest.warns(RegistryUnreachable, match="REGISTRY UNREACHABLE: 1 of 1 cells NOT checked"):
        with pytest.raises(pytest.skip.Exception):
            outcome(cells)


def test_failures_are_classified_from_the_resolver_output():
    missing = ("error: No solution found when resolving dependencies\n  cause: Because decord==0.6.0 has no wheels "
               "with a matching platform tag (e.g., `manylinux_2_28_aarch64`) and only decord<=0.6.0 is available, "
               "we can conclude that decord>=0.6.0 cannot be used.\n")
    cell = classify("linux-aarch64", "3.12", missing, 1.0)
    assert (cell.status, cell.culprit) == ("missing", "decord") and "manylinux_2_28_aarch64" in cell.detail
    required = "  cause: Because you require Torch>=9 and only torch<=2.15.0 is available, we can conclude ...\n"
    assert classify("macos-arm64", "3.10", required, 1.0).culprit == "torch"
    refused = "error: Failed to fetch: `https://pypi.org/simple/numpy/`\n  cause: tcp connect error\n"
    assert classify("macos-arm64", "3.10", refused, 1.0).status == "network"
    assert classify("macos-arm64", "3.10", "error: something else\n", 1.0).status == "error"
