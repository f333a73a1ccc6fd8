"""The package declares itself typed and its metadata names what users look for."""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_the_package_ships_the_pep_561_marker() -> None:
    assert resources.files("ce_parallel").joinpath("py.typed").is_file()


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is new in Python 3.11")
def test_pyproject_names_versions_typing_status_and_urls() -> None:
    import tomllib

    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    classifiers = set(project["classifiers"])
    for minor in range(10, 14):
        assert f"Programming Language :: Python :: 3.{minor}" in classifiers
    assert "Typing :: Typed" in classifiers
    assert any(c.startswith("Development Status ::") for c in classifiers)
    assert project["license"] == "BSD-3-Clause"
    assert {"Homepage", "Documentation", "Source", "Changelog"} <= set(project["urls"])
    assert any(d.startswith("tqdm") for d in project["dependencies"])
    bench = " ".join(project["optional-dependencies"]["bench"])
    assert "dask" in bench and "distributed" in bench
