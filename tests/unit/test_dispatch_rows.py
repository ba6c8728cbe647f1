"""``transitions.Rows`` puts its table, key and key type into SQL: only plain names pass."""

from __future__ import annotations

import pytest

from polder.dispatch.transitions import Rows


def test_plain_names_make_a_locking_read() -> None:
    rows = Rows("workers", "driver_id", "text", ["d1"], where="status = 'idle'")
    assert rows._select() == (  # noqa: SLF001
        "SELECT * FROM workers WHERE driver_id = ANY($1::text[]) AND (status = 'idle') "
        "ORDER BY driver_id"
    )


@pytest.mark.parametrize(
    "names",
    [
        ("workers; DROP TABLE orders", "driver_id", "text"),
        ("workers", "driver_id OR true", "text"),
        ("workers", "driver_id", "text[]); --"),
        ("Workers", "driver_id", "text"),
    ],
)
def test_anything_else_is_refused(names: tuple[str, str, str]) -> None:
    with pytest.raises(ValueError, match="plain SQL name"):
        Rows(*names, keys=[])
