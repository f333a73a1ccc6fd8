"""Run the ce-parallel ablation: every strategy and the usual alternatives on every workload.

Usage::

    python evaluation/parallel_ablation.py [--quick | --tiny] [--out results.json]
        [--plot speedup.png | --no-plot] [--markdown summary.md] [--workloads a,b] [--runners x,y]

With ``--out results.json`` the chart goes to ``results.png`` unless ``--plot`` or ``--no-plot``
says otherwise; the folders of the output files are created before the run starts.

The implementation lives in ``ce_parallel.bench.ablation`` so that ``ce-parallel bench`` runs the
same thing from an installed wheel; ``--help`` lists every option.
"""

from __future__ import annotations

from ce_parallel.bench.ablation import main

if __name__ == "__main__":
    raise SystemExit(main())
