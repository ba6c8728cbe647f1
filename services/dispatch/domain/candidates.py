"""Candidate search: the k nearest available workers around a pickup, with their costs."""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator, Mapping, Sequence

from polder.common.geoindex import LocationIndex, Nearby
from polder.dispatch.domain.availability import FreshIdle
from polder.dispatch.domain.delivery_timing import early_arrival_s, pickup_cost
from polder.dispatch.domain.eta import GREAT_CIRCLE, EtaProvider, GreatCircleEta, Leg
from polder.dispatch.domain.match_types import (
    DEFAULT_CONFIG,
    Candidate,
    MatchConfig,
    OpenOrder,
    Worker,
)


def search_radii(config: MatchConfig) -> Iterator[float]:
    """Radii to try, doubling from the initial one up to the maximum (which is always tried).

    The index answers exactly at any radius, so widening only saves work: a small radius stays
    on fine H3 cells, and most pickups find their k workers there.
    """
    radius = config.initial_radius_m
    while radius < config.max_radius_m:
        yield radius
        radius *= 2
    yield config.max_radius_m


def candidates(
    order: OpenOrder,
    workers: Mapping[str, Worker],
    index: LocationIndex,
    now: float,
    config: MatchConfig = DEFAULT_CONFIG,
    eta: EtaProvider = GREAT_CIRCLE,
) -> list[Candidate]:
    """The ``k_nearest`` eligible workers within ``max_radius_m`` of the pickup, cheapest first.

    Eligible: present in ``workers`` (the available ones) and not in ``order.excluded``.
    Positions come from ``index``; ``workers`` supplies how long each has been waiting.
    """
    hits: list[Nearby] = []
    for radius in search_radii(config):
        hits = _nearest_eligible(order, workers, index, now, radius, config.k_nearest)
        if len(hits) >= config.k_nearest:
            break
    return candidates_found(order, hits, workers, now, config, eta)


def candidates_found(
    order: OpenOrder,
    hits: Sequence[Nearby],
    workers: Mapping[str, Worker],
    now: float,
    config: MatchConfig = DEFAULT_CONFIG,
    eta: EtaProvider = GREAT_CIRCLE,
) -> list[Candidate]:
    """The candidates of an order from the workers a search found for it (``hits``: the k
    nearest eligible, as ``candidates`` finds them, or a batch's ``WorkerTree``), cheapest
    first.

    A batch builds thousands (every order's k nearest, again for longer lists), so what is
    the same for all of an order's candidates is worked out once, outside the loop; each
    candidate is ``_candidate``'s, to the bit (the unit tests compare them)."""
    since = _waiting_since(workers)
    found: list[Candidate] = []
    if type(eta) is GreatCircleEta and (order.kind != "delivery" or order.ready_at is None):
        # The great-circle leg over the distance the search measured (``along_arc``), and no
        # early arrival: a ride, or a delivery without a ready time, costs its pickup ETA.
        factor, speed = eta.road_factor, eta.speed_mps
        for hit in hits:
            driver_id = hit.position.driver_id
            distance_m = hit.distance_m * factor
            eta_s = distance_m / speed
            waited = now - since(driver_id)
            found.append(
                Candidate(
                    driver_id,
                    distance_m,
                    eta_s,
                    waited if waited > 0.0 else 0.0,  # max(0.0, waited)
                    eta_s,  # pickup_cost(eta_s, 0.0, config): the ETA
                    0.0,
                )
            )
    else:
        leg = _leg(order, eta)
        found = [
            _candidate(order, h, leg(h), since(h.position.driver_id), now, config) for h in hits
        ]
    found.sort(key=_CHEAPEST_FIRST)
    return found


# (cost, distance_m, driver_id): cheapest first, then nearest, then by id
_CHEAPEST_FIRST = operator.itemgetter(4, 1, 0)


def _waiting_since(workers: Mapping[str, Worker]) -> Callable[[str], float]:
    """When each found worker's wait began: a ``FreshIdle`` view answers without building a
    ``Worker`` (the search already found them fresh and idle); any other mapping, its own."""
    if isinstance(workers, FreshIdle):
        return workers.waiting_since
    return lambda driver_id: workers[driver_id].waiting_since


def _leg(order: OpenOrder, eta: EtaProvider) -> Callable[[Nearby], Leg]:
    """The pickup leg from a found worker: the great-circle estimate takes the distance the
    search measured (the same metres ``haversine_m`` gives), any other provider (a subclass
    too: it may measure otherwise) is asked."""
    if type(eta) is GreatCircleEta:
        along_arc = eta.along_arc
        return lambda hit: along_arc(hit.distance_m)
    to_lat, to_lng = order.pickup_lat, order.pickup_lng
    return lambda hit: eta.pickup(hit.position.lat, hit.position.lng, to_lat, to_lng)


def _nearest_eligible(
    order: OpenOrder,
    workers: Mapping[str, Worker],
    index: LocationIndex,
    now: float,
    radius_m: float,
    want: int,
) -> list[Nearby]:
    excluded = order.excluded
    available = (
        workers.membership_among(index, now)
        if isinstance(workers, FreshIdle)
        else workers.__contains__
    )
    eligible: Callable[[str], bool] = (
        (lambda driver_id: available(driver_id) and driver_id not in excluded)
        if excluded
        else available
    )
    return index.nearby(order.pickup_lat, order.pickup_lng, radius_m, want, now, eligible)


def _candidate(
    order: OpenOrder, hit: Nearby, leg: Leg, waiting_since: float, now: float, config: MatchConfig
) -> Candidate:
    early_s = early_arrival_s(order, leg.eta_s, now)
    # Positional: keywords cost a named tuple twice as much, thousands of times a batch.
    return Candidate(
        hit.position.driver_id,  # driver_id
        leg.distance_m,  # distance_m
        leg.eta_s,  # eta_s
        max(0.0, now - waiting_since),  # waiting_s
        pickup_cost(leg.eta_s, early_s, config),  # cost
        early_s,  # early_s
    )
