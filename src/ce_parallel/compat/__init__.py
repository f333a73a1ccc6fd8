"""Drop-in adapters that let existing callers run on ce-parallel without changing their calls.

``ce_parallel.compat.calibrated_explanations`` offers ``ParallelConfig`` and ``ParallelExecutor``
under the names calibrated-explanations uses, so switching is a change of one import line.
"""
