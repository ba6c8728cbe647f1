"""Topic layouts: production partitions everywhere but on the embedded broker."""

from __future__ import annotations

from polder.common.topics import DRIVER_LOCATIONS, TOPICS


def test_the_embedded_layout_has_fewer_partitions_only_where_it_says_so() -> None:
    for t in TOPICS:
        assert t.partitions_on(embedded=False) == t.partitions
        on_tansu = t.partitions_on(embedded=True)
        if t.embedded_partitions is None:
            assert on_tansu == t.partitions
        else:
            assert 1 <= on_tansu == t.embedded_partitions <= t.partitions
    # The busy ping stream is the one the embedded broker cannot take in eight partitions.
    assert DRIVER_LOCATIONS.partitions_on(embedded=True) < DRIVER_LOCATIONS.partitions
