"""Work that cannot cross the process boundary: an unpicklable item or result."""

from __future__ import annotations

import pytest
from faults.harness import assert_settled, run_scenario

BODY = """
STRATEGY = {strategy!r}
LOCK = threading.Lock()

def name_of(x):
    return "lock" if hasattr(x, "acquire") else x

def lock_for_three(x):
    return threading.Lock() if x == 3 else x

before = usage()
cases = {{}}
for case, fn, items in [
    ("item", name_of, [0, 1, LOCK, 3, 4, 5]),
    ("result", lock_for_three, list(range(6))),
]:
    for mode in ("serial", "raise"):
        RECORDS.clear()
        ex = create_executor(
            ParallelConfig(strategy=STRATEGY, max_workers=2, fallback=mode, telemetry=record)
        )
        try:
            result, error = ex.map(fn, items, chunksize=1), None
        except Exception as exc:
            result, error = None, [type(exc).__name__, list(getattr(exc, "incomplete", ()))]
        again = ex.map(abs, [-1, -2])
        ex.shutdown()
        shown = result and [r if isinstance(r, (int, str)) else "lock" for r in result]
        cases[f"{{case}}-{{mode}}"] = dict(
            result=shown, error=error, fallbacks=fallbacks(), again=again
        )
done(cases=cases, before=before, after=settle(before))
"""

EXPECTED = {"item": [0, 1, "lock", 3, 4, 5], "result": [0, 1, 2, "lock", 4, 5]}
BAD_ITEM = {"item": 2, "result": 3}


@pytest.mark.parametrize("strategy", ["processes", "joblib"])
def test_unpicklable_item_or_result_reruns_serially_or_raises(strategy: str) -> None:
    out = run_scenario(BODY.format(strategy=strategy)).result
    for case in ("item", "result"):
        serial = out["cases"][f"{case}-serial"]
        assert serial["result"] == EXPECTED[case]
        (record,) = serial["fallbacks"]
        assert record["cause"] == "SerializationError"
        assert record["action"] == "serial"
        # loky fails only the chunk that could not be pickled; the others were kept
        assert record["chunks"] == [BAD_ITEM[case]]

        raised = out["cases"][f"{case}-raise"]
        name, incomplete = raised["error"]
        assert name == "SerializationError"
        assert BAD_ITEM[case] in incomplete
        assert raised["fallbacks"][0]["action"] == "raise"
        for mode in ("serial", "raise"):
            assert out["cases"][f"{case}-{mode}"]["again"] == [1, 2]
    assert_settled(out)
