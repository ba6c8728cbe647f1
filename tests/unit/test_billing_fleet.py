"""The fleet's last hour, as the workers dashboard and the unpaid-waiting alert read it: the
same figures a statement gives, summed over workers (hand-checked on the NL shift of
test_billing_statement: 7.5 h online, one trip, 30 min break)."""

from prometheus_client import CollectorRegistry

from polder.billing.fleet import publish, summarize
from polder.billing.metrics import BillingMetrics
from tests.unit.test_billing_statement import NL_SEGMENTS, nl_statement


def test_the_fleet_hour_adds_up_the_statements_figures() -> None:
    platform = nl_statement("platform_share")
    nl = nl_statement("nl_hourly")
    hour = summarize("platform_share", NL_SEGMENTS, {"platform_share": [platform], "nl": [nl]})
    # P1 = idle + offered (403 min), P2 = to the pickup and at it (15 min), P3 = 32 min
    assert (hour.p1_s, hour.p2_s, hour.p3_s) == (403 * 60, 15 * 60, 32 * 60)
    # platform_share pays only the 3 min beyond the pickup grace (the wait fee)
    assert (hour.paid_waiting_s, hour.unpaid_waiting_s) == (180, 24420)
    assert hour.unpaid_waiting_ratio == 24420 / 27000
    share = hour.policies["platform_share"]
    # 32.85 EUR earned (tips excluded) over 7.5 online hours
    assert share.currency == "EUR" and share.earnings_per_online_hour_minor == 3285 / 7.5
    assert hour.policies["nl"].earnings_per_online_hour_minor == (
        (nl.total_minor - nl.tips_minor) / 7.5
    )


def test_published_gauges_carry_bounded_labels_only() -> None:
    metrics = BillingMetrics(CollectorRegistry())
    hour = summarize(
        "platform_share", NL_SEGMENTS, {"platform_share": [nl_statement("platform_share")]}
    )
    publish(hour, metrics)
    get = metrics.registry.get_sample_value
    assert get("polder_billing_fleet_phase_seconds", {"phase": "P1"}) == 403 * 60
    assert get("polder_billing_fleet_waiting_seconds", {"paid": "no"}) == 24420
    assert get("polder_billing_unpaid_waiting_ratio") == 24420 / 27000
    assert (
        get(
            "polder_billing_fleet_earnings_per_online_hour_minor",
            {"policy": "platform_share", "currency": "EUR"},
        )
        == 3285 / 7.5
    )
    # the next minute without that policy: its series goes, it does not linger
    publish(summarize("platform_share", NL_SEGMENTS, {}), metrics)
    assert (
        get(
            "polder_billing_fleet_earnings_per_online_hour_minor",
            {"policy": "platform_share", "currency": "EUR"},
        )
        is None
    )
