"""The Prometheus rules only use metrics the services really export."""

import re
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from polder.location.metrics import LocationMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def exported_names() -> set[str]:
    names: set[str] = set()
    for family in LocationMetrics(CollectorRegistry()).registry.collect():
        base = family.name
        names |= {base, f"{base}_total", f"{base}_bucket", f"{base}_count", f"{base}_sum"}
    return names


def test_rules_reference_only_exported_metrics() -> None:
    rules = yaml.safe_load((DEPLOY / "rules.yml").read_text())
    used: set[str] = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            used |= set(re.findall(r"\bpolder_[a-z_]+\b", rule["expr"]))
    assert used, "the rules use no metrics at all"
    assert used <= exported_names(), used - exported_names()


def test_prometheus_config_loads_the_rules_file() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert config["rule_files"] == ["rules.yml"]
    assert {j["job_name"] for j in config["scrape_configs"]} >= {"polder-location"}
