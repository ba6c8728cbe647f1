"""The producer's partitioner keeps key hashes but must place every key where aiokafka's
default (Kafka's Java client's murmur2) does: consumers and other clients rely on it."""

from __future__ import annotations

import random
import uuid

from aiokafka.partitioner import DefaultPartitioner

from polder.common.bus import KeptHashPartitioner


def test_every_key_goes_where_the_default_partitioner_puts_it() -> None:
    rng = random.Random(3)
    kept, default = KeptHashPartitioner(keep=64), DefaultPartitioner()
    keys = [str(uuid.UUID(int=rng.getrandbits(128))).encode() for _ in range(300)]
    keys += [f"drv-{i:05d}".encode() for i in range(300)] + [b"", b"x", bytes(range(256))]
    for partitions in ([0], list(range(8)), list(range(24)), [0, 2, 5]):
        for key in keys + keys[:50]:  # again: from the kept hashes (64 kept: some evicted)
            assert kept(key, partitions, partitions) == default(key, partitions, partitions)


def test_no_key_goes_to_an_available_partition() -> None:
    kept = KeptHashPartitioner()
    assert {kept(None, [0, 1, 2, 3], [1, 3]) for _ in range(50)} <= {1, 3}
    assert {kept(None, [0, 1], []) for _ in range(50)} <= {0, 1}
