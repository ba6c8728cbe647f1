"""The API-cost benchmark drives every route it measures through the app, checking each answer
(its figures are timings, not checked here)."""

from __future__ import annotations

import pytest

from loadtests.api_cost import MODES, measure, parse_args, render
from polder.common.settings import Settings

pytestmark = pytest.mark.integration


async def test_every_mode_is_measured_on_the_real_app(settings: Settings) -> None:
    opts = parse_args(["--rounds", "2", "--per-round", "5"])
    doc = await measure(settings, opts, matcher="none")
    figures = doc["cpu_us_per_request"]
    assert list(figures) == list(MODES)
    for q in figures.values():
        assert 0 <= q["min"] <= q["median"] <= q["max"]
    assert doc["requests"] == 2 * 5 * len(MODES)
    assert doc["orders_placed"] == 20 + 2 * 5  # the warm-up's and the rounds'
    assert doc["offers_accepted"] == 20 + 2 * 5  # each a trip of its own (checked as made)
    assert "POST /v1/orders: median (min–max) of 2 rounds" in render(opts, doc)


@pytest.mark.parametrize("args", [["--rounds", "0"], ["--per-round", "0"]])
def test_nonsense_options_are_refused(args: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(args)
