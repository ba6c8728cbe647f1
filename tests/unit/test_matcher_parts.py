"""How a batch's writes are split into parts (``matcher._parts``): the orders waiting longest for a
first offer go first, in parts that double in size; every decision goes out exactly once."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from polder.dispatch.domain.assignment import Assignment, BatchResult
from polder.dispatch.matcher import _parts

T0 = datetime(2026, 12, 7, 22, 0, tzinfo=UTC)


def _batch(
    assigned: int, unmatched: int = 0, again: int = 0, seed: int = 1
) -> tuple[BatchResult, dict[str, dict[str, Any]]]:
    """``assigned`` orders with an assignment (the last ``again`` of them offered before and
    searching again), ``unmatched`` without; created in a shuffled order."""
    rng = random.Random(seed)
    ids = [f"o{i:04d}" for i in range(assigned + unmatched)]
    rows = {
        order_id: {
            "order_id": order_id,
            "created_at": T0 + timedelta(milliseconds=rng.randrange(1_000_000)),
            "first_offer_at": T0 if assigned - again <= i < assigned else None,
            "scheduled_for": None,
        }
        for i, order_id in enumerate(ids)
    }
    assignments = [Assignment(o, f"d-{o}", 100.0, 10.0, 10.0) for o in ids[:assigned]]
    rng.shuffle(assignments)
    decisions = {order_id: object() for order_id in ids}
    return (
        BatchResult(assignments, [], ids[assigned:], decisions, "exact"),  # type: ignore[arg-type]
        rows,
    )


def _waited_longest_first(rows: dict[str, dict[str, Any]], order_ids: list[str]) -> list[str]:
    return sorted(
        order_ids,
        key=lambda o: (rows[o]["first_offer_at"] is not None, rows[o]["created_at"], o),
    )


def test_parts_double_and_go_oldest_first_with_every_decision_once() -> None:
    result, rows = _batch(300, unmatched=17, again=5)
    parts = _parts(result, rows, 32)
    assert [len(a) for a, _ in parts] == [32, 64, 128, 76]
    offered = [a.order_id for assignments, _ in parts for a in assignments]
    assert offered == _waited_longest_first(rows, [a.order_id for a in result.assignments])
    assert offered[-5:] == sorted(offered[-5:], key=lambda o: rows[o]["created_at"])
    assert all(rows[o]["first_offer_at"] is not None for o in offered[-5:])  # searching again
    # An order's decision goes with its offer; the orders without one go with the last part.
    for assignments, decided in parts[:-1]:
        assert set(decided) == {a.order_id for a in assignments}
    last_assignments, last_decided = parts[-1]
    assert set(last_decided) == {a.order_id for a in last_assignments} | set(result.unmatched)
    every = [o for _, decided in parts for o in decided]
    assert sorted(every) == sorted(result.decisions)


@pytest.mark.parametrize(
    ("assigned", "first", "sizes"),
    [
        (10, 0, [10]),
        (10, 10, [10]),
        (10, 11, [10]),
        (10, 9, [9, 1]),
        (7, 1, [1, 2, 4]),
        (8, 1, [1, 2, 4, 1]),
        (96, 32, [32, 64]),
    ],
)
def test_part_sizes(assigned: int, first: int, sizes: list[int]) -> None:
    result, rows = _batch(assigned, unmatched=2)
    parts = _parts(result, rows, first)
    assert [len(a) for a, _ in parts] == sizes
    assert sorted(o for _, decided in parts for o in decided) == sorted(result.decisions)
    assert set(result.unmatched) <= set(parts[-1][1])


def test_decisions_of_orders_no_longer_open_are_left_out() -> None:
    """``rows`` are the batch's open orders as read; a decision for another order (none today)
    is not written."""
    result, rows = _batch(40, unmatched=3)
    gone = result.unmatched[0]
    del rows[gone]
    parts = _parts(result, rows, 8)
    written = [o for _, decided in parts for o in decided]
    assert gone not in written and len(written) == len(result.decisions) - 1
