"""``python -m ce_parallel``: the same command as the ``ce-parallel`` console script."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
