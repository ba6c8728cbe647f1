"""Idempotency keys with Stripe's semantics: the first response to a key is stored with a hash of
the request; the same key with the same request replays it, with another request it is a 422.

The stored response is written in the same transaction as the effect, so a crash cannot leave
an effect without its key or a key without its effect.

A refusal the effect decides (404 not found, 409 conflict) is an answer too: it is stored and
replayed, and the effect's writes are rolled back. Refusals of the request itself (400, 422)
and transient ones (a 409 asking to retry, 5xx) are not stored, so the client can retry the
same key, or correct its request and send it with a new one.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from polder.common.db import Pool
from polder.common.deferred import RUN_LOCKED, Pessimize, Tx, why_locked
from polder.common.errors import ApiError

MAX_KEY_LENGTH = 255
Effect = Callable[[Tx], Awaitable[tuple[int, dict[str, Any]]]]


def request_hash(method: str, path: str, body: Any) -> str:
    canonical = orjson.dumps([method, path, body], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


# A refusal with one of these statuses is the request's outcome; "retry" asks for another try.
STORED_REFUSALS = frozenset({404, 409})
TRANSIENT_CODES = frozenset({"retry"})


@dataclass(frozen=True, slots=True)
class Outcome:
    status: int
    body: dict[str, Any]
    replayed: bool  # the stored answer to an earlier request: the effect did not run now


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


class _Refused(Exception):
    """The effect refused (a stored refusal): its transaction rolls back, the answer is kept."""

    def __init__(self, err: ApiError) -> None:
        super().__init__(err.code)
        self.err = err


def _stored_refusal(err: ApiError) -> bool:
    return err.status in STORED_REFUSALS and err.code not in TRANSIENT_CODES


_STORE = (
    "INSERT INTO idempotency_keys (principal, key, request_hash, status_code, response) "
    "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING 1"
)


# Optimistic: the answer goes in the effect's one statement, and a stored key makes the whole
# statement fail (nothing of the effect stays).
_STORE_NEW = (
    "INSERT INTO idempotency_keys (principal, key, request_hash, status_code, response) "
    "VALUES ($1, $2, $3, $4, $5) RETURNING 1"
)
_STORED = (
    "SELECT request_hash, status_code, response FROM idempotency_keys "
    "WHERE principal = $1 AND key = $2"
)


async def run_once(
    pool: Pool,
    principal: str,
    key: str,
    digest: str,
    effect: Effect,
    *,
    optimistic: bool = False,
    report: Callable[[str], None] | None = None,
) -> Outcome:
    """Run ``effect`` at most once per (principal, key); return its answer, or the stored one.

    ``optimistic``: first without a transaction (common.deferred's optimistic ``Tx``): the effect
    runs before the key is looked up, and its writes and its answer go in one statement that the
    key's primary key refuses if the key is stored, in which case the stored answer is replayed.
    One round trip for an effect that reads nothing (two with a guarded read) instead of four or
    five; an effect that needs a transaction, or whose rows changed, runs again in one. Effects
    must keep their side effects for after the commit (a replay runs them, then discards them).
    ``report`` hears how an optimistic attempt ended: applied, changed or needs_lock.

    Of concurrent requests with one key, one commits; the others' effects roll back (their
    inserts of the key wait on the winner's and find it) and they replay the winner's answer.
    The effect's writes may be held (``Tx.defer``): they go to Postgres with the key's answer,
    in one statement. A refusal before any write was sent drops the held writes and is stored in
    the same transaction; after one, the transaction rolls back and the refusal is stored on its
    own (should the process die in between, a retry runs the effect again).
    """
    if optimistic:
        try:
            outcome = await _once_optimistic(pool, principal, key, digest, effect)
        except RUN_LOCKED as exc:
            if report is not None:
                report(why_locked(exc))
        else:
            if report is not None and not outcome.replayed:
                report("applied")
            return outcome
    for _ in range(2):
        try:
            async with pool.acquire() as conn, conn.transaction():
                tx = Tx(conn)
                stored = await tx.fetchrow(_STORED, principal, key)
                if stored is not None:
                    return _replay(stored, digest)
                try:
                    status, body = await effect(tx)
                except ApiError as err:
                    if not _stored_refusal(err):
                        raise
                    if tx.wrote:  # some of the effect's writes went: roll them all back
                        raise _Refused(err) from err
                    tx.discard()  # the usual case: it refused before writing anything
                    status, body = err.status, err.body()
                if await tx.finish(_STORE, principal, key, digest, status, body) is None:
                    raise _Raced  # roll our effect back and replay the winner's response
                return Outcome(status, body, replayed=False)
        except _Raced:
            continue
        except _Refused as refused:
            status, body = refused.err.status, refused.err.body()
            if await pool.fetchval(_STORE, principal, key, digest, status, body) is None:
                continue  # a twin answered first: replay its answer
            return Outcome(status, body, replayed=False)
    raise ApiError(409, "idempotency_conflict", "a request with this key is still in progress")


async def _once_optimistic(
    pool: Pool, principal: str, key: str, digest: str, effect: Effect
) -> Outcome:
    async with pool.acquire() as conn:
        tx = Tx(conn, optimistic=True)
        try:
            status, body = await effect(tx)
        except ApiError as err:
            if not _stored_refusal(err):
                raise Pessimize("a refusal that is not stored: look for a stored answer") from err
            tx.discard()  # nothing was sent: optimistic writes are all held
            status, body = err.status, err.body()
        try:
            await tx.finish(_STORE_NEW, principal, key, digest, status, body)
        except asyncpg.UniqueViolationError as exc:
            if exc.table_name != "idempotency_keys":
                raise
            # The insert waited for the key's first request to commit: its answer is there.
            stored = await conn.fetchrow(_STORED, principal, key)
            if stored is None:
                raise Pessimize("the key's first request rolled back") from exc
            return _replay(stored, digest)
    return Outcome(status, body, replayed=False)


def _reused() -> ApiError:
    return ApiError(
        422, "idempotency_key_reused", "this Idempotency-Key was used with a different request"
    )


def _replay(stored: asyncpg.Record, digest: str) -> Outcome:
    if stored["request_hash"] != digest:
        raise _reused()
    response: dict[str, Any] = stored["response"]
    return Outcome(int(stored["status_code"]), response, replayed=True)


Answer = tuple[int, dict[str, Any]]


@dataclass(slots=True)
class _Recent:
    digest: str
    answer: asyncio.Future[Answer]
    expires: float


class RecentAnswers:
    """Answers to Idempotency-Keys held in this process's memory for ``keep_s`` (at most
    ``max_keys`` of them), for requests whose effects are deduplicated downstream anyway, where
    a Postgres write per request would cost more than it saves. Same semantics as ``run_once``
    within one process and its memory: a concurrent twin waits for the first answer and gets
    it; a key is forgotten on restart, after ``keep_s``, or by another replica."""

    def __init__(
        self, keep_s: float, max_keys: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.keep_s = keep_s
        self.max_keys = max_keys
        self._clock = clock
        self._recent: dict[tuple[str, str], _Recent] = {}

    def __len__(self) -> int:
        return len(self._recent)

    async def once(
        self, principal: str, key: str, digest: str, effect: Callable[[], Awaitable[Answer]]
    ) -> Outcome:
        now = self._clock()
        held = self._recent.get((principal, key))
        if held is not None and held.expires > now:
            if held.digest != digest:
                raise _reused()
            status, body = await asyncio.shield(held.answer)
            return Outcome(status, body, replayed=True)
        self._make_room(now)
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._recent[(principal, key)] = _Recent(digest, answer, now + self.keep_s)
        try:
            status, body = await effect()
        except ApiError as err:
            if not _stored_refusal(err):
                self._forget(principal, key, answer, err)
                raise
            status, body = err.status, err.body()
        except BaseException as exc:
            self._forget(principal, key, answer, exc)
            raise
        answer.set_result((status, body))
        return Outcome(status, body, replayed=False)

    def _forget(
        self, principal: str, key: str, answer: asyncio.Future[Answer], exc: BaseException
    ) -> None:
        """Not an answer to keep: the key is free again, and twins waiting get the error."""
        held = self._recent.get((principal, key))
        if held is not None and held.answer is answer:
            del self._recent[(principal, key)]
        if isinstance(exc, asyncio.CancelledError):
            answer.cancel()
        else:
            answer.set_exception(exc)
            answer.exception()  # retrieved: no "never retrieved" report when no twin waits

    def _make_room(self, now: float) -> None:
        if len(self._recent) < self.max_keys:
            return
        self._recent = {k: v for k, v in self._recent.items() if v.expires > now}
        while len(self._recent) >= self.max_keys:  # all fresh: the oldest go first
            del self._recent[next(iter(self._recent))]
