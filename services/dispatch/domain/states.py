"""The worker and order state machines: which cause moves which state where, and nothing else.

Worker: ``offline → idle ⇄ offered → en_route_pickup → at_pickup → on_trip → at_dropoff → idle``,
plus ``break`` (online, not available). Order: ``searching → offered → assigned →
driver_arrived → in_progress → completed``, or ``cancelled`` / ``expired``.
"""

from __future__ import annotations

from enum import StrEnum


class WorkerStatus(StrEnum):
    OFFLINE = "offline"
    IDLE = "idle"
    OFFERED = "offered"
    EN_ROUTE_PICKUP = "en_route_pickup"
    AT_PICKUP = "at_pickup"
    ON_TRIP = "on_trip"
    AT_DROPOFF = "at_dropoff"
    BREAK = "break"


class OrderStatus(StrEnum):
    SEARCHING = "searching"
    OFFERED = "offered"
    ASSIGNED = "assigned"
    DRIVER_ARRIVED = "driver_arrived"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class Cause(StrEnum):
    """Why a state changed. The same names appear in events, so billing sees them too."""

    WENT_ONLINE = "went_online"
    WENT_OFFLINE = "went_offline"
    TOOK_BREAK = "took_break"
    OFFER_SENT = "offer_sent"
    OFFER_DECLINED = "offer_declined"
    OFFER_EXPIRED = "offer_expired"
    OFFER_WITHDRAWN = "offer_withdrawn"
    OFFER_ACCEPTED = "offer_accepted"
    ARRIVED_PICKUP = "arrived_pickup"
    PICKED_UP = "picked_up"
    ARRIVED_DROPOFF = "arrived_dropoff"
    COMPLETED = "completed"
    CANCELLED_BY_DRIVER = "cancelled_by_driver"
    CANCELLED_BY_CUSTOMER = "cancelled_by_customer"
    SEARCH_TIMED_OUT = "search_timed_out"


W, O, C = WorkerStatus, OrderStatus, Cause  # noqa: E741 (short names keep the tables legible)

WORKER_TRANSITIONS: dict[tuple[WorkerStatus, Cause], WorkerStatus] = {
    (W.OFFLINE, C.WENT_ONLINE): W.IDLE,
    (W.BREAK, C.WENT_ONLINE): W.IDLE,
    (W.IDLE, C.WENT_OFFLINE): W.OFFLINE,
    (W.BREAK, C.WENT_OFFLINE): W.OFFLINE,
    (W.IDLE, C.TOOK_BREAK): W.BREAK,
    (W.IDLE, C.OFFER_SENT): W.OFFERED,
    (W.OFFERED, C.OFFER_DECLINED): W.IDLE,
    (W.OFFERED, C.OFFER_EXPIRED): W.IDLE,
    (W.OFFERED, C.OFFER_WITHDRAWN): W.IDLE,
    (W.OFFERED, C.OFFER_ACCEPTED): W.EN_ROUTE_PICKUP,
    (W.EN_ROUTE_PICKUP, C.ARRIVED_PICKUP): W.AT_PICKUP,
    (W.AT_PICKUP, C.PICKED_UP): W.ON_TRIP,
    (W.ON_TRIP, C.ARRIVED_DROPOFF): W.AT_DROPOFF,
    (W.AT_DROPOFF, C.COMPLETED): W.IDLE,
    (W.EN_ROUTE_PICKUP, C.CANCELLED_BY_DRIVER): W.IDLE,
    (W.AT_PICKUP, C.CANCELLED_BY_DRIVER): W.IDLE,
    (W.EN_ROUTE_PICKUP, C.CANCELLED_BY_CUSTOMER): W.IDLE,
    (W.AT_PICKUP, C.CANCELLED_BY_CUSTOMER): W.IDLE,
}

ORDER_TRANSITIONS: dict[tuple[OrderStatus, Cause], OrderStatus] = {
    (O.SEARCHING, C.OFFER_SENT): O.OFFERED,
    (O.OFFERED, C.OFFER_DECLINED): O.SEARCHING,
    (O.OFFERED, C.OFFER_EXPIRED): O.SEARCHING,
    (O.OFFERED, C.OFFER_WITHDRAWN): O.SEARCHING,
    (O.OFFERED, C.OFFER_ACCEPTED): O.ASSIGNED,
    (O.ASSIGNED, C.ARRIVED_PICKUP): O.DRIVER_ARRIVED,
    (O.DRIVER_ARRIVED, C.PICKED_UP): O.IN_PROGRESS,
    (O.IN_PROGRESS, C.ARRIVED_DROPOFF): O.IN_PROGRESS,
    (O.IN_PROGRESS, C.COMPLETED): O.COMPLETED,
    (O.SEARCHING, C.SEARCH_TIMED_OUT): O.EXPIRED,
    (O.ASSIGNED, C.CANCELLED_BY_DRIVER): O.CANCELLED,
    (O.DRIVER_ARRIVED, C.CANCELLED_BY_DRIVER): O.CANCELLED,
    **{
        (status, C.CANCELLED_BY_CUSTOMER): O.CANCELLED
        for status in (O.SEARCHING, O.OFFERED, O.ASSIGNED, O.DRIVER_ARRIVED)
    },
}

# Workers in these states may receive an offer; only idle ones actually do.
AVAILABLE = frozenset({W.IDLE})
# A worker on one of these is on a trip: status changes are refused until it ends.
ON_A_JOB = frozenset({W.EN_ROUTE_PICKUP, W.AT_PICKUP, W.ON_TRIP, W.AT_DROPOFF})
OPEN_ORDER = frozenset({O.SEARCHING, O.OFFERED, O.ASSIGNED, O.DRIVER_ARRIVED, O.IN_PROGRESS})
# A return to idle after these starts a new unpaid wait; after a declined or expired offer the
# worker never stopped waiting, so the wait keeps its start.
NEW_WAIT_AFTER = frozenset(
    {C.WENT_ONLINE, C.COMPLETED, C.CANCELLED_BY_DRIVER, C.CANCELLED_BY_CUSTOMER}
)


class IllegalTransition(Exception):
    """A cause that does not apply to the current state (HTTP 409 with the current state)."""

    def __init__(self, kind: str, current: str, cause: Cause) -> None:
        super().__init__(f"{kind} is {current}: cannot apply {cause.value}")
        self.kind = kind
        self.current = current
        self.cause = cause


def next_worker_status(current: WorkerStatus, cause: Cause) -> WorkerStatus:
    try:
        return WORKER_TRANSITIONS[(current, cause)]
    except KeyError:
        raise IllegalTransition("worker", current.value, cause) from None


def next_order_status(current: OrderStatus, cause: Cause) -> OrderStatus:
    try:
        return ORDER_TRANSITIONS[(current, cause)]
    except KeyError:
        raise IllegalTransition("order", current.value, cause) from None


TRIP_STEPS: dict[str, Cause] = {
    "arrived_pickup": C.ARRIVED_PICKUP,
    "picked_up": C.PICKED_UP,
    "arrived_dropoff": C.ARRIVED_DROPOFF,
    "completed": C.COMPLETED,
    "cancelled": C.CANCELLED_BY_DRIVER,
}

STATUS_REQUESTS: dict[str, Cause] = {
    "online": C.WENT_ONLINE,
    "offline": C.WENT_OFFLINE,
    "break": C.TOOK_BREAK,
}
