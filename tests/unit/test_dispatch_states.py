import itertools

import pytest

from polder.dispatch.domain.states import (
    ORDER_TRANSITIONS,
    WORKER_TRANSITIONS,
    Cause,
    IllegalTransition,
    OrderStatus,
    WorkerStatus,
    next_order_status,
    next_worker_status,
)

W, O, C = WorkerStatus, OrderStatus, Cause  # noqa: E741


def test_a_whole_trip_walks_both_machines_in_step() -> None:
    worker, order = W.OFFLINE, O.SEARCHING
    worker = next_worker_status(worker, C.WENT_ONLINE)
    for cause in (
        C.OFFER_SENT,
        C.OFFER_ACCEPTED,
        C.ARRIVED_PICKUP,
        C.PICKED_UP,
        C.ARRIVED_DROPOFF,
        C.COMPLETED,
    ):
        worker = next_worker_status(worker, cause)
        order = next_order_status(order, cause)
    assert (worker, order) == (W.IDLE, O.COMPLETED)


@pytest.mark.parametrize("outcome", [C.OFFER_DECLINED, C.OFFER_EXPIRED])
def test_an_unanswered_offer_returns_both_to_where_they_were(outcome: Cause) -> None:
    assert next_worker_status(W.OFFERED, outcome) is W.IDLE
    assert next_order_status(O.OFFERED, outcome) is O.SEARCHING


def test_customer_may_cancel_until_pickup_but_not_after() -> None:
    for status in (O.SEARCHING, O.OFFERED, O.ASSIGNED, O.DRIVER_ARRIVED):
        assert next_order_status(status, C.CANCELLED_BY_CUSTOMER) is O.CANCELLED
    for status in (O.IN_PROGRESS, O.COMPLETED, O.CANCELLED, O.EXPIRED):
        with pytest.raises(IllegalTransition) as err:
            next_order_status(status, C.CANCELLED_BY_CUSTOMER)
        assert err.value.current == status.value


def test_only_a_searching_order_expires() -> None:
    assert next_order_status(O.SEARCHING, C.SEARCH_TIMED_OUT) is O.EXPIRED
    with pytest.raises(IllegalTransition):
        next_order_status(O.OFFERED, C.SEARCH_TIMED_OUT)


def test_workers_on_a_job_cannot_go_offline_or_take_a_break() -> None:
    for status, cause in itertools.product(
        (W.EN_ROUTE_PICKUP, W.AT_PICKUP, W.ON_TRIP, W.AT_DROPOFF), (C.WENT_OFFLINE, C.TOOK_BREAK)
    ):
        with pytest.raises(IllegalTransition, match=status.value):
            next_worker_status(status, cause)


def test_only_idle_workers_can_be_offered_work() -> None:
    for status in W:
        if status is W.IDLE:
            assert next_worker_status(status, C.OFFER_SENT) is W.OFFERED
        else:
            with pytest.raises(IllegalTransition):
                next_worker_status(status, C.OFFER_SENT)


def test_transition_tables_only_name_real_states() -> None:
    for (state, cause), target in WORKER_TRANSITIONS.items():
        assert isinstance(state, W) and isinstance(cause, C) and isinstance(target, W)
    for (state, cause), target in ORDER_TRANSITIONS.items():
        assert isinstance(state, O) and isinstance(cause, C) and isinstance(target, O)
    terminal = {O.COMPLETED, O.CANCELLED, O.EXPIRED}
    assert not any(state in terminal for state, _ in ORDER_TRANSITIONS)
