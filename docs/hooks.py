"""mkdocs hooks: publish the committed benchmark results next to the pages that cite them.

The results live in ``evaluation/results/`` (outside ``docs/``) so that the harness writes them
where the code is; this hook adds the JSON and PNG files there to the site under ``results/``.
"""

from __future__ import annotations

import os
from typing import Any

from mkdocs.structure.files import File, Files

RESULTS_DIR = os.path.join("evaluation", "results")
PUBLISHED_SUFFIXES = (".json", ".png", ".svg")


def on_files(files: Files, config: Any) -> Files:
    """Add every committed result file (JSON, charts) to the site as ``results/<name>``."""
    root = os.path.dirname(os.path.abspath(config["config_file_path"]))
    results = os.path.join(root, RESULTS_DIR)
    if not os.path.isdir(results):
        return files
    for name in sorted(os.listdir(results)):
        if name.endswith(PUBLISHED_SUFFIXES):
            files.append(
                File.generated(config, f"results/{name}", abs_src_path=os.path.join(results, name))
            )
    return files
