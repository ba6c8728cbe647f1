"""Pay-policy rates: versioned, effective-dated, per jurisdiction, each with its source.

The figures live in ``services/billing/policies.json`` (package data of ``polder.billing``);
``load_rates`` is the only function here that reads a file. Everything else takes a parsed
``RateBook`` so pay calculations stay pure. The file mirrors ``polder.fares.tariff``: a version is
in force from its ``effective_from`` until the next version of the same policy and jurisdiction.

Rates are decimal strings (never JSON floats, which would already have lost the exact value).
Amounts ``*_minor`` are minor units of the jurisdiction's currency and may be fractional
(NYC's $0.583/min is ``"58.3"``); ratios (``wage_multiplier``, ``fare_share``) are plain numbers.

A jurisdiction names the currency its rates are in and the time zone whose midnights bound its
pay periods. The jurisdiction ``"*"`` holds rates that fit any currency (a share of the fare).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from polder.billing.domain.fx import FX_FILE, Conversion, FxBook, load_fx
from polder.fares.money import CurrencyMismatch, check_currency

# domain/ is a folder of polder.billing, whose package data holds the rates file.
RATES_FILE = Path(__file__).parent.parent / "policies.json"
SUPPORTED_FORMAT = 1
ANY_JURISDICTION = "*"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


class PolicyName(StrEnum):
    NL_HOURLY = "nl_hourly"
    PROP22 = "prop22"
    NYC_TLC = "nyc_tlc"
    SEATTLE_PAYUP = "seattle_payup"
    PLATFORM_SHARE = "platform_share"


DEFAULT_POLICY = PolicyName.NL_HOURLY

# The rates each policy needs, and nothing else: a typo in the file is an error, not a zero.
POLICY_PARAMS: Mapping[PolicyName, frozenset[str]] = MappingProxyType(
    {
        PolicyName.NL_HOURLY: frozenset({"hourly_minor", "per_km_minor"}),
        PolicyName.PROP22: frozenset({"minimum_wage_minor", "wage_multiplier", "per_mile_minor"}),
        PolicyName.NYC_TLC: frozenset({"per_mile_minor", "per_minute_minor"}),
        PolicyName.SEATTLE_PAYUP: frozenset(
            {"per_minute_minor", "per_mile_minor", "per_offer_minor"}
        ),
        PolicyName.PLATFORM_SHARE: frozenset({"fare_share", "fee_share"}),
    }
)
_SHARES = frozenset({"fare_share", "fee_share"})


class UnknownRates(KeyError):
    """No rates of this policy are in force for that jurisdiction, currency or time."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown rates"


class UnknownPolicy(KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown policy"


def policy_name(name: str) -> PolicyName:
    try:
        return PolicyName(name)
    except ValueError:
        known = ", ".join(p.value for p in PolicyName)
        raise UnknownPolicy(f"unknown pay policy {name!r}; known: {known}") from None


def to_ms(moment: datetime) -> int:
    """Epoch milliseconds of an aware datetime, exactly (no float on the way)."""
    if moment.tzinfo is None:
        raise ValueError("datetime must be timezone-aware")
    return (moment - _EPOCH) // _MS


@dataclass(frozen=True, slots=True)
class Jurisdiction:
    id: str
    name: str
    currency: str
    timezone: str  # IANA name; its local midnights bound the pay periods
    cities: tuple[str, ...]  # tariff cities (polder.fares) that lie in it
    default_policy: PolicyName

    def __post_init__(self) -> None:
        check_currency(self.currency)


@dataclass(frozen=True, slots=True)
class RateVersion:
    """One version of one policy's rates in one jurisdiction."""

    policy: PolicyName
    jurisdiction: str
    version: str
    effective_from: datetime
    params: Mapping[str, Decimal]
    source: str

    def __post_init__(self) -> None:
        if self.effective_from.tzinfo is None:
            raise ValueError(f"{self.version}: effective_from needs a UTC offset")
        expected = POLICY_PARAMS[self.policy]
        if unknown := self.params.keys() - expected:
            raise ValueError(f"{self.version}: unknown rates {sorted(unknown)}")
        if missing := expected - self.params.keys():
            raise ValueError(f"{self.version}: missing rates {sorted(missing)}")
        for name, value in self.params.items():
            if not (value.is_finite() and value >= 0):
                raise ValueError(f"{self.version}: {name} must be a non-negative number")
            if name in _SHARES and value > 1:
                raise ValueError(f"{self.version}: {name} is a share, at most 1")

    @property
    def effective_from_ms(self) -> int:
        return to_ms(self.effective_from)

    def rate(self, name: str) -> Decimal:
        return self.params[name]


@dataclass(frozen=True, slots=True)
class RateSchedule:
    """The versions of one policy in one jurisdiction, oldest first."""

    policy: PolicyName
    jurisdiction: str
    currency: str | None  # None: rates that fit any currency
    versions: tuple[RateVersion, ...]
    conversion: Conversion | None = None  # set when converted from the home currency

    def __post_init__(self) -> None:
        if not self.versions:
            raise ValueError("a rate schedule needs at least one version")
        starts = [v.effective_from_ms for v in self.versions]
        if starts != sorted(set(starts)):
            raise ValueError("rate versions must be in effective order, one per instant")

    def check_currency(self, currency: str) -> None:
        if self.currency is not None and self.currency != currency:
            raise CurrencyMismatch(
                f"{self.policy} rates of {self.jurisdiction!r} are in {self.currency}, "
                f"not {currency}"
            )

    def at(self, ms: int) -> RateVersion:
        """The version in force at epoch milliseconds ``ms``."""
        in_force = [v for v in self.versions if v.effective_from_ms <= ms]
        if not in_force:
            raise UnknownRates(
                f"no {self.policy} rates for {self.jurisdiction!r} in force at {ms} ms; "
                f"the first take effect {self.versions[0].effective_from.isoformat()}"
            )
        return in_force[-1]

    def spans(self, start_ms: int, end_ms: int) -> list[tuple[RateVersion, int, int]]:
        """``[start_ms, end_ms)`` cut where a new version takes effect, with each piece's rates."""
        pieces: list[tuple[RateVersion, int, int]] = []
        cursor = start_ms
        while True:
            version = self.at(cursor)
            later = [v.effective_from_ms for v in self.versions if v.effective_from_ms > cursor]
            stop = min([end_ms, *later])
            pieces.append((version, cursor, stop))
            if stop >= end_ms:
                return pieces
            cursor = stop


@dataclass(frozen=True, slots=True)
class Rates:
    """What one pay calculation needs: the policy's floor rates and the platform's share."""

    floor: RateSchedule
    share: RateSchedule


@dataclass(frozen=True, slots=True)
class RateBook:
    jurisdictions: tuple[Jurisdiction, ...]
    versions: tuple[RateVersion, ...]
    fx: FxBook = FxBook()  # reference rates, to compare a policy on a record in another currency

    def __post_init__(self) -> None:
        ids = [j.id for j in self.jurisdictions]
        if len(set(ids)) != len(ids) or ANY_JURISDICTION in ids:
            raise ValueError("jurisdiction ids must be unique and not '*'")
        cities = [c for j in self.jurisdictions for c in j.cities]
        if len(set(cities)) != len(cities):
            raise ValueError("a city belongs to one jurisdiction")
        keys = [(v.policy, v.jurisdiction, v.effective_from_ms) for v in self.versions]
        if len(set(keys)) != len(keys):
            raise ValueError("two rate versions share a policy, jurisdiction and effective_from")
        known = {*ids, ANY_JURISDICTION}
        if strays := {v.jurisdiction for v in self.versions} - known:
            raise ValueError(f"rates for undeclared jurisdictions: {sorted(strays)}")

    def jurisdiction(self, jurisdiction_id: str) -> Jurisdiction:
        for j in self.jurisdictions:
            if j.id == jurisdiction_id:
                return j
        raise UnknownRates(f"unknown jurisdiction {jurisdiction_id!r}")

    def jurisdiction_of_city(self, city: str) -> Jurisdiction:
        for j in self.jurisdictions:
            if city in j.cities:
                return j
        raise UnknownRates(f"no jurisdiction lists the city {city!r}")

    def schedule(self, policy: str, jurisdiction_id: str) -> RateSchedule:
        """Every version of ``policy`` in exactly ``jurisdiction_id``."""
        name = policy_name(policy)
        versions = sorted(
            (v for v in self.versions if v.policy == name and v.jurisdiction == jurisdiction_id),
            key=lambda v: v.effective_from_ms,
        )
        if not versions:
            raise UnknownRates(f"no {name} rates for {jurisdiction_id!r}")
        currency = (
            None
            if jurisdiction_id == ANY_JURISDICTION
            else self.jurisdiction(jurisdiction_id).currency
        )
        return RateSchedule(name, jurisdiction_id, currency, tuple(versions))

    def resolve(
        self, policy: str, currency: str, jurisdiction_id: str | None = None
    ) -> RateSchedule:
        """The rates a statement in ``currency`` uses for ``policy``.

        The worker's own jurisdiction when it has rates for the policy; otherwise rates that
        fit any currency; otherwise the one jurisdiction with rates for the policy in
        ``currency`` (its home: asking an NYC worker's record for ``prop22`` applies
        California's figures). With no such jurisdiction and the policy at home in one
        jurisdiction of another currency, its money rates converted at the reference rate of
        ``fx`` (a comparison: ``RateSchedule.conversion`` says so); else ``UnknownRates``.
        """
        name = policy_name(policy)
        check_currency(currency)
        mine = {v.jurisdiction for v in self.versions if v.policy == name}
        if jurisdiction_id is not None and jurisdiction_id in mine:
            found = self.schedule(name, jurisdiction_id)
            found.check_currency(currency)
            return found
        if ANY_JURISDICTION in mine:
            return self.schedule(name, ANY_JURISDICTION)
        homes = sorted(j for j in mine if self.jurisdiction(j).currency == currency)
        if not homes and len(mine) == 1:
            # the policy's one home keeps its rates in another currency: compare its rules on
            # this record with its money rates converted at a reference rate (domain.fx)
            converted = self.converted(self.schedule(name, next(iter(mine))), currency)
            if converted is not None:
                return converted
        if len(homes) != 1:
            where = f"{len(homes)} jurisdictions ({', '.join(homes)})" if homes else "none"
            raise UnknownRates(f"{name} rates in {currency}: {where}; name the jurisdiction")
        return self.schedule(name, homes[0])

    def converted(self, schedule: RateSchedule, currency: str) -> RateSchedule | None:
        """``schedule`` with its money rates (``*_minor``) in ``currency``; None without a
        reference rate for the pair. Ratios (multipliers, shares) are left as they are."""
        if schedule.currency is None:
            return schedule
        conv = self.fx.conversion(schedule.currency, currency)
        if conv is None:
            return None
        note = (
            f" | converted from {conv.from_currency} at 1 {conv.base} = {conv.rate} "
            f"{conv.quote} ({conv.date}) for comparison"
        )
        versions = tuple(
            replace(
                v,
                params=MappingProxyType(
                    {k: conv.convert(x) if k.endswith("_minor") else x for k, x in v.params.items()}
                ),
                source=v.source + note,
            )
            for v in schedule.versions
        )
        return replace(schedule, currency=currency, versions=versions, conversion=conv)

    def rates_for(self, policy: str, currency: str, jurisdiction_id: str | None = None) -> Rates:
        return Rates(
            floor=self.resolve(policy, currency, jurisdiction_id),
            share=self.resolve(PolicyName.PLATFORM_SHARE, currency, jurisdiction_id),
        )


def load_rates(path: Path = RATES_FILE, fx_path: Path = FX_FILE) -> RateBook:
    """Read and parse the rates file and the reference exchange rates (the packaged ones
    unless told otherwise)."""
    book = parse_rates(json.loads(path.read_text(encoding="utf-8")))
    return replace(book, fx=load_fx(fx_path))


def parse_rates(document: Mapping[str, Any]) -> RateBook:
    if document.get("format") != SUPPORTED_FORMAT:
        raise ValueError(f"rates file format must be {SUPPORTED_FORMAT}")
    return RateBook(
        tuple(parse_jurisdiction(raw) for raw in document["jurisdictions"]),
        tuple(parse_rate_version(raw) for raw in document["rates"]),
    )


def parse_jurisdiction(raw: Mapping[str, Any]) -> Jurisdiction:
    keys = {"id", "name", "currency", "timezone", "cities", "default_policy"}
    _exact_keys(raw, keys, "jurisdiction")
    cities = raw["cities"]
    if not isinstance(cities, list) or not all(isinstance(c, str) and c for c in cities):
        raise ValueError("cities must be a list of names")
    return Jurisdiction(
        id=_text(raw, "id"),
        name=_text(raw, "name"),
        currency=_text(raw, "currency"),
        timezone=_text(raw, "timezone"),
        cities=tuple(cities),
        default_policy=policy_name(_text(raw, "default_policy")),
    )


def parse_rate_version(raw: Mapping[str, Any]) -> RateVersion:
    keys = {"policy", "jurisdiction", "version", "effective_from", "rates", "source"}
    _exact_keys(raw, keys, "rate")
    params = raw["rates"]
    if not isinstance(params, Mapping):
        raise ValueError("rates must be an object")
    return RateVersion(
        policy=policy_name(_text(raw, "policy")),
        jurisdiction=_text(raw, "jurisdiction"),
        version=_text(raw, "version"),
        effective_from=datetime.fromisoformat(_text(raw, "effective_from")),
        params=MappingProxyType({key: _decimal(params, key) for key in params}),
        source=_text(raw, "source"),
    )


def _exact_keys(raw: Mapping[str, Any], expected: set[str], what: str) -> None:
    if unknown := raw.keys() - expected:
        raise ValueError(f"unknown {what} keys: {sorted(unknown)}")
    if missing := expected - raw.keys():
        raise ValueError(f"missing {what} keys: {sorted(missing)}")


def _text(raw: Mapping[str, Any], key: str) -> str:
    value = raw[key]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty string")
    return value


def _decimal(raw: Mapping[str, Any], key: str) -> Decimal:
    value = raw[key]
    try:
        if not isinstance(value, str):
            raise InvalidOperation
        return Decimal(value)
    except InvalidOperation as exc:
        raise ValueError(f"{key} must be a decimal string, got {value!r}") from exc
