"""Names that go into SQL text (schemas, tables, columns) must be plain identifiers."""

from __future__ import annotations

import pytest

from polder.common.db import is_identifier


@pytest.mark.parametrize("name", ["dispatch", "dispatch_t29d03319e06a", "_x", "a" * 63])
def test_plain_names_pass(name: str) -> None:
    assert is_identifier(name)


@pytest.mark.parametrize(
    "name",
    ["", "Orders", "9lives", "a-b", "a b", "orders;", "orders\n", "a" * 64, 'x"y', "décisions"],
)
def test_anything_else_does_not(name: str) -> None:
    assert not is_identifier(name)
