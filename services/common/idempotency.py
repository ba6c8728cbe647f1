"""Idempotency keys with Stripe's semantics: the first response to a key is stored with a hash of
the request; the same key with the same request replays it, with another request it is a 422.

The stored response is written in the same transaction as the effect, so a crash cannot leave
an effect without its key or a key without its effect.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson

from polder.common.db import Connection, Pool
from polder.common.errors import ApiError

MAX_KEY_LENGTH = 255
Effect = Callable[[Connection], Awaitable[tuple[int, dict[str, Any]]]]


def request_hash(method: str, path: str, body: Any) -> str:
    canonical = orjson.dumps([method, path, body], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def check_key(key: str | None) -> str:
    if not key:
        raise ApiError(400, "idempotency_key_required", "send an Idempotency-Key header")
    if len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise ApiError(
            400, "invalid_idempotency_key", "Idempotency-Key must be 1-255 printable characters"
        )
    return key


class _Raced(Exception):
    """Another request with the same key committed first."""


async def run_once(
    pool: Pool, principal: str, key: str, digest: str, effect: Effect
) -> tuple[int, dict[str, Any]]:
    """Run ``effect`` at most once per (principal, key); return its (status, body)."""
    for _ in range(2):
        try:
            async with pool.acquire() as conn, conn.transaction():
                stored = await conn.fetchrow(
                    "SELECT request_hash, status_code, response FROM idempotency_keys "
                    "WHERE principal = $1 AND key = $2",
                    principal,
                    key,
                )
                if stored is not None:
                    return _replay(stored, digest)
                status, body = await effect(conn)
                inserted = await conn.fetchval(
                    "INSERT INTO idempotency_keys (principal, key, request_hash, status_code, "
                    "response) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING 1",
                    principal,
                    key,
                    digest,
                    status,
                    body,
                )
                if inserted is None:
                    raise _Raced  # roll our effect back and replay the winner's response
                return status, body
        except _Raced:
            continue
    raise ApiError(409, "idempotency_conflict", "a request with this key is still in progress")


def _replay(stored: asyncpg.Record, digest: str) -> tuple[int, dict[str, Any]]:
    if stored["request_hash"] != digest:
        raise ApiError(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request",
        )
    response: dict[str, Any] = stored["response"]
    return int(stored["status_code"]), response
