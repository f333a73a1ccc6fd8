"""The documentation stays true: its Python examples run, its appendix matches the constants
table, and the site builds strictly.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
#: A fenced block whose info string starts with ``python`` is an example that must run.
PYTHON_BLOCK = re.compile(r"^```python[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
#: Seconds one example may take; they use small inputs and finish in about a second.
EXAMPLE_TIMEOUT_S = 60


def _examples() -> list[tuple[str, str]]:
    found = []
    for page in sorted(DOCS.glob("*.md")):
        for n, match in enumerate(PYTHON_BLOCK.finditer(page.read_text(encoding="utf-8")), 1):
            found.append((f"{page.name}#{n}", match.group(1)))
    return found


def _clean_environ() -> dict[str, str]:
    # the examples describe the defaults: the operator's variables and CI markers would change
    # the decisions they print (never their results), so they are removed
    drop = {"CI", "GITHUB_ACTIONS", "GITLAB_CI", "BUILDKITE", "TF_BUILD", "JENKINS_URL"}
    return {
        k: v for k, v in os.environ.items() if not k.startswith("CE_PARALLEL") and k not in drop
    }


EXAMPLES = _examples()
#: Optional packages an example may import; the example is skipped when one is not installed.
OPTIONAL_MODULES = ("calibrated_explanations", "distributed", "sklearn", "matplotlib")


def _missing_optional(code: str) -> str | None:
    for module in OPTIONAL_MODULES:
        imported = re.search(rf"^\s*(from|import)\s+{module}\b", code, re.MULTILINE)
        if imported and importlib.util.find_spec(module) is None:
            return module
    return None


def test_the_docs_have_python_examples() -> None:
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize(("where", "code"), EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_every_python_example_in_the_docs_runs(where: str, code: str, tmp_path: Path) -> None:
    missing = _missing_optional(code)
    if missing is not None:
        pytest.skip(f"{where} needs {missing}, which is not installed")
    # each example runs as its own script, so `if __name__ == "__main__":` guards behave as they
    # do for a user and nothing leaks between examples
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=_clean_environ(),
        capture_output=True,
        text=True,
        timeout=EXAMPLE_TIMEOUT_S,
    )
    assert proc.returncode == 0, f"{where} failed:\n{code}\n--- stderr ---\n{proc.stderr}"


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_appendix", DOCS / "gen_appendix.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_appendix_matches_the_heuristics_table() -> None:
    generated = _load_generator().render()
    committed = (DOCS / "appendix.md").read_text(encoding="utf-8")
    assert committed == generated, (
        "docs/appendix.md is out of date with ce_parallel.heuristics; "
        "regenerate it with: python docs/gen_appendix.py"
    )


def test_the_appendix_names_every_heuristic_with_its_value() -> None:
    from ce_parallel.heuristics import HEURISTICS

    text = (DOCS / "appendix.md").read_text(encoding="utf-8")
    for heuristic in HEURISTICS:
        assert f"`{heuristic.name}`" in text
        assert f"`{heuristic.value!r}`" in text


def test_the_docs_explain_every_decision_reason_code() -> None:
    from ce_parallel.gate import REASONS

    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    missing = [code for code in REASONS if f"| `{code}` |" not in text]
    assert not missing, f"docs/configuration.md does not explain reason codes {missing}"


def test_the_docs_list_every_parallel_config_field() -> None:
    import dataclasses

    from ce_parallel import ParallelConfig

    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    missing = [f.name for f in dataclasses.fields(ParallelConfig) if f"| `{f.name}` |" not in text]
    assert not missing, f"docs/configuration.md does not describe fields {missing}"


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None,
    reason="mkdocs is not installed (pip install 'ce-parallel[docs]')",
)
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=EXAMPLE_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "site" / "index.html").exists()
