"""The res-8 parent the retention SQL computes by bits is H3's own parent."""

from __future__ import annotations

import random

import h3.api.basic_int as h3

from polder.location.retention import parent8


def test_parent8_is_h3s_parent_for_every_index_resolution() -> None:
    rng = random.Random(8)
    for _ in range(500):
        lat, lng = rng.uniform(-85, 85), rng.uniform(-180, 180)
        for res in range(8, 16):
            cell = h3.latlng_to_cell(lat, lng, res)
            assert parent8(cell) == h3.cell_to_parent(cell, 8), (lat, lng, res)
