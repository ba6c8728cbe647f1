"""The dispatch benchmark's report: the first part of each batch, told from the offers alone."""

from __future__ import annotations

import pytest

from loadtests._dispatch_load import Offer
from loadtests._dispatch_report import _first_part_waits


def _offer(n: int, batch: str, at: float, published: float) -> Offer:
    return Offer(f"f{n}", f"o{n}", f"d{n}", at=at, published=published, batch_id=batch)


def test_only_the_offers_of_each_batchs_earliest_written_part_count() -> None:
    offers = [
        _offer(1, "b1", at=10.000, published=10.030),  # b1, first part
        _offer(2, "b1", at=10.000, published=10.045),
        _offer(3, "b1", at=10.050, published=10.090),  # b1, second part
        _offer(4, "b2", at=11.020, published=11.060),  # b2 had one part
    ]
    assert _first_part_waits(offers) == pytest.approx([0.030, 0.045, 0.040])


def test_no_offers_no_waits() -> None:
    assert _first_part_waits([]) == []
