"""The solve-time benchmark measures what it says on a small city (its figures are timings,
not checked here)."""

from __future__ import annotations

import pytest

from loadtests.solve_time import measure, parse_args, render


def test_a_small_city_is_solved_and_reported() -> None:
    opts = parse_args(["--drivers", "400", "--orders", "30", "--batches", "3", "--busy", "0.5"])
    doc = measure(opts)
    assert 100 < doc["available"] < 300  # about half of 400 busy
    assert 0 < doc["assigned_per_batch"] <= 30
    for figure in ("solve_ms", "candidate_search_ms", "tree_search_ms"):
        q = doc[figure]
        assert 0 <= q["p10"] <= q["p50"] <= q["p90"]
    assert "assign_batch p10 / p50 / p90" in render(opts, doc)


@pytest.mark.parametrize("args", [["--busy", "1.0"], ["--orders", "0"], ["--batches", "0"]])
def test_nonsense_options_are_refused(args: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(args)
