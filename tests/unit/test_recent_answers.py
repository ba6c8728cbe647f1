import asyncio
from typing import Any

import pytest

from polder.common.errors import ApiError
from polder.common.idempotency import RecentAnswers


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Effect:
    def __init__(self, *results: Any) -> None:
        self.results = list(results)
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self) -> tuple[int, dict[str, Any]]:
        self.calls += 1
        await self.gate.wait()
        result = self.results.pop(0)
        if isinstance(result, BaseException):
            raise result
        status, body = result
        return status, body


async def test_the_same_key_and_request_replay_the_first_answer() -> None:
    answers = RecentAnswers(keep_s=60, max_keys=10, clock=Clock())
    effect = Effect((202, {"accepted": 2}), (202, {"accepted": 0}))
    first = await answers.once("driver:a", "k", "h1", effect)
    again = await answers.once("driver:a", "k", "h1", effect)
    assert (first.status, first.body, first.replayed) == (202, {"accepted": 2}, False)
    assert (again.status, again.body, again.replayed) == (202, {"accepted": 2}, True)
    assert effect.calls == 1
    with pytest.raises(ApiError) as caught:
        await answers.once("driver:a", "k", "h2", effect)
    assert caught.value.status == 422 and caught.value.code == "idempotency_key_reused"
    assert (await answers.once("driver:b", "k", "h2", effect)).body == {"accepted": 0}


async def test_a_concurrent_twin_waits_for_the_first_answer() -> None:
    answers = RecentAnswers(keep_s=60, max_keys=10)
    effect = Effect((202, {"accepted": 1}))
    effect.gate.clear()
    first = asyncio.create_task(answers.once("p", "k", "h", effect))
    twin = asyncio.create_task(answers.once("p", "k", "h", effect))
    await asyncio.sleep(0)
    effect.gate.set()
    a, b = await asyncio.gather(first, twin)
    assert effect.calls == 1 and a.body == b.body and b.replayed


async def test_refusals_are_kept_but_failures_free_the_key() -> None:
    answers = RecentAnswers(keep_s=60, max_keys=10)
    conflict = ApiError(409, "illegal_transition", "no")
    outage = ApiError(503, "unavailable", "retry")
    effect = Effect(conflict, outage, (202, {"accepted": 1}))
    refused = await answers.once("p", "a", "h", effect)
    assert refused.status == 409 and refused.body == conflict.body()
    assert (await answers.once("p", "a", "h", effect)).status == 409  # kept
    with pytest.raises(ApiError):
        await answers.once("p", "b", "h", effect)
    assert (await answers.once("p", "b", "h", effect)).body == {"accepted": 1}  # tried again
    assert effect.calls == 3


async def test_answers_are_forgotten_after_keep_s_and_bounded_in_number() -> None:
    clock = Clock()
    answers = RecentAnswers(keep_s=10, max_keys=3, clock=clock)
    effect = Effect(*[(202, {"n": i}) for i in range(6)])
    await answers.once("p", "old", "h", effect)
    clock.now = 11
    assert (await answers.once("p", "old", "h", effect)).body == {"n": 1}  # expired: runs again
    for key in ("x", "y", "z"):
        await answers.once("p", key, "h", effect)
    assert len(answers) == 3  # the oldest was dropped to make room
    assert (await answers.once("p", "z", "h", effect)).replayed
