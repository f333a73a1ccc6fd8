"""The benchmark that backs every default of ce-parallel.

``workloads`` defines the canonical workloads (deterministic data, documented sizes);
``ablation`` runs them under every strategy and the baselines a user would pick instead, and
writes JSON, a Markdown summary and a chart. Run it with ``ce-parallel bench`` or
``python evaluation/parallel_ablation.py``. Nothing here is imported by ``import ce_parallel``.
"""
