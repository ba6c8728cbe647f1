"""deploy/ stays true to the code: the rules and dashboards query only metrics the services
export, the derived files are what deploy/generate.py writes, the production topic definitions
match services/common/topics.py, and the manifests carry what an orchestrator needs.

promtool (Debian package `prometheus`) checks the configs and runs the alert unit tests
(deploy/prometheus/rules.test.yml) when it is installed."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from polder.billing.metrics import BillingMetrics
from polder.common.metrics import PoolCollector
from polder.common.topics import TOPICS
from polder.dispatch.domain.surge import SurgeModel
from polder.dispatch.metrics import DispatchMetrics, SurgeCollector
from polder.location.metrics import LocationMetrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")


def exported_names() -> set[str]:
    registries = []
    for metrics in (LocationMetrics, DispatchMetrics, BillingMetrics):
        registries.append(metrics(CollectorRegistry()).registry)
    registries[1].register(SurgeCollector(SurgeModel()))  # as dispatch's main wires it
    registries[0].register(PoolCollector(dict))  # as every service's resources wire it
    names: set[str] = set()
    for registry in registries:
        for family in registry.collect():
            base = family.name
            names |= {base, f"{base}_total", f"{base}_bucket", f"{base}_count", f"{base}_sum"}
    return names


def metrics_in(expr: str) -> set[str]:
    return set(re.findall(r"\bpolder_[a-z_]+\b", expr))


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("polder_deploy_generate", DEPLOY / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# --- Prometheus -------------------------------------------------------------------------------


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_rules_reference_only_exported_metrics() -> None:
    used: set[str] = set()
    for rule in rules():
        used |= metrics_in(rule["expr"])
    assert used, "the rules use no metrics at all"
    assert used <= exported_names(), used - exported_names()


def test_every_alert_the_issue_asks_for_is_there() -> None:
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert alerts >= {
        "PolderDispatchSlow",  # dispatch p99 over target
        "PolderOrdersExpiring",  # orders expiring without a driver
        "PolderConsumerLagGrowing",
        "PolderDeadLetters",
        "PolderUnpaidWaitingHigh",
        "PolderBillingBehind",
    }


def test_every_alert_has_a_severity_and_a_summary() -> None:
    for rule in rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]


@pytest.mark.parametrize("config", ["prometheus/prometheus.yml", "compose/prometheus.yml"])
def test_prometheus_configs_load_the_rules_and_scrape_every_service(config: str) -> None:
    loaded = yaml.safe_load((DEPLOY / config).read_text())
    assert loaded["rule_files"] == ["rules.yml"]
    jobs = {job["job_name"] for job in loaded["scrape_configs"]}
    assert jobs == {"polder-location", "polder-dispatch", "polder-billing"}


@needs_promtool
@pytest.mark.parametrize("config", ["prometheus/prometheus.yml", "compose/prometheus.yml"])
def test_promtool_accepts_the_configs(config: str, tmp_path: Path) -> None:
    shutil.copy(DEPLOY / config, tmp_path / "prometheus.yml")
    shutil.copy(DEPLOY / "prometheus" / "rules.yml", tmp_path / "rules.yml")
    run = subprocess.run(
        [str(PROMTOOL), "check", "config", "prometheus.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


@needs_promtool
def test_promtool_checks_the_rules_and_every_alert_fires_as_tested() -> None:
    folder = DEPLOY / "prometheus"
    check = subprocess.run(
        [str(PROMTOOL), "check", "rules", "rules.yml"], cwd=folder, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(
        [str(PROMTOOL), "test", "rules", "rules.test.yml"],
        cwd=folder,
        capture_output=True,
        text=True,
    )
    assert test.returncode == 0, test.stdout + test.stderr


def test_the_alert_unit_tests_cover_every_alert() -> None:
    tests = yaml.safe_load((DEPLOY / "prometheus" / "rules.test.yml").read_text())["tests"]
    tested = {case["alertname"] for t in tests for case in t.get("alert_rule_test", [])}
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    untested = alerts - tested - {"PolderLocationRejectsHigh", "PolderHandlerFailing"}
    assert not untested, f"alerts without a promtool unit test: {untested}"


# --- Generated files --------------------------------------------------------------------------


def test_derived_files_are_what_generate_py_writes() -> None:
    stale = [
        str(path.relative_to(ROOT))
        for path, text in generator().render().items()
        if not path.exists() or path.read_text() != text
    ]
    assert not stale, f"run `.venv/bin/python deploy/generate.py`; stale: {stale}"


def test_dashboards_query_only_exported_metrics() -> None:
    exported = exported_names()
    folder = DEPLOY / "grafana" / "dashboards"
    titles = set()
    for path in sorted(folder.glob("*.json")):
        dashboard = json.loads(path.read_text())
        titles.add(dashboard["title"])
        for panel in dashboard["panels"]:
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                used = metrics_in(target["expr"])
                assert used, f"{path.name}: {panel['title']} queries no Polder metric"
                assert used <= exported, f"{path.name}: {panel['title']}: {used - exported}"
    assert titles == {"Polder / Operations", "Polder / Marketplace", "Polder / Workers"}


def test_grafana_provisioning_points_at_the_dashboards_and_prometheus() -> None:
    prov = DEPLOY / "grafana" / "provisioning"
    [source] = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["uid"] == "prometheus" and source["url"] == "http://prometheus:9090"
    [provider] = yaml.safe_load((prov / "dashboards" / "polder.yml").read_text())["providers"]
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"../grafana/dashboards:{provider['options']['path']}:ro" in mounts


# --- Topics -----------------------------------------------------------------------------------


def test_compose_creates_every_topic_as_topics_py_defines_it() -> None:
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    script = "\n".join(compose["services"]["topics"]["command"])
    created = {
        name: (int(parts), int(retention))
        for name, parts, retention in re.findall(r"^\s*create (\S+) (\d+) (\d+)$", script, re.M)
    }
    assert created == {t.name: (t.partitions, t.retention_ms) for t in TOPICS}


def test_strimzi_topics_match_topics_py() -> None:
    docs = load_all(DEPLOY / "kubernetes" / "kafka" / "topics.yaml")
    assert {d["spec"]["topicName"]: d["spec"]["partitions"] for d in docs} == {
        t.name: t.partitions for t in TOPICS
    }
    for doc in docs:
        assert doc["spec"]["replicas"] == 3
        assert doc["spec"]["config"]["min.insync.replicas"] == 2


def test_strimzi_kafka_survives_one_node_with_acks_all() -> None:
    [pool, kafka] = load_all(DEPLOY / "kubernetes" / "kafka" / "kafka.yaml")
    assert pool["kind"] == "KafkaNodePool" and pool["spec"]["replicas"] >= 3
    config = kafka["spec"]["kafka"]["config"]
    assert config["default.replication.factor"] == 3 and config["min.insync.replicas"] == 2
    assert config["auto.create.topics.enable"] is False


# --- Compose and the image --------------------------------------------------------------------


def test_compose_runs_the_whole_production_shape() -> None:
    compose = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {
        "kafka",
        "topics",
        "postgres",
        "location",
        "dispatch",
        "billing",
        "prometheus",
        "grafana",
    }
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "broker,controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    for name, port in (("location", 8001), ("dispatch", 8002), ("billing", 8003)):
        svc = services[name]
        assert svc["command"] == [name]
        assert svc["ports"] == [f"{port}:8000"]
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
        assert "/readyz" in " ".join(svc["healthcheck"]["test"])
        env = svc["environment"]
        assert env["POLDER_MODE"] == "production"
        assert env["POLDER_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert svc["depends_on"]["topics"] == {"condition": "service_completed_successfully"}
    for name, svc in services.items():
        image = svc.get("image", "")
        assert ":" in image and not image.endswith(":latest") or "build" in svc, name


def test_the_image_runs_as_a_non_root_user_with_a_health_check() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and all(not u.startswith(("root", "0")) for u in users)
    assert re.search(r"^HEALTHCHECK .*\n.*/healthz", dockerfile, re.M)
    assert 'ENTRYPOINT ["polder", "serve", "--port", "8000"]' in dockerfile


def test_the_wheel_the_image_installs_carries_every_data_file(tmp_path: Path) -> None:
    """The Dockerfile installs the distribution (not an editable tree): schemas, migrations,
    tariffs and policies must travel inside the wheel, or the services fail at start."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("services", "schemas"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "--disable-pip-version-check",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    [wheel] = (tmp_path / "dist").glob("polder-*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    wanted = {
        "polder/" + str(p.relative_to(ROOT / "services"))
        for p in (ROOT / "services").rglob("*")
        if p.suffix in {".json", ".sql"}
    } | {
        "polder/schemas/" + p.name
        for p in (ROOT / "schemas").iterdir()
        if p.suffix in {".json", ".yaml"}
    }
    assert wanted and wanted <= inside, sorted(wanted - inside)


# --- Kubernetes -------------------------------------------------------------------------------


def k8s_objects() -> list[dict[str, Any]]:
    folder = DEPLOY / "kubernetes"
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    objects: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        objects += load_all(folder / resource)
    return objects


def test_each_service_has_a_deployment_with_probes_resources_and_a_pdb() -> None:
    objects = k8s_objects()
    deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    pdbs = {o["metadata"]["name"]: o for o in objects if o["kind"] == "PodDisruptionBudget"}
    services = {o["metadata"]["name"] for o in objects if o["kind"] == "Service"}
    assert set(deployments) == {"polder-location", "polder-dispatch", "polder-billing"}
    for name, deployment in deployments.items():
        spec = deployment["spec"]
        assert spec["replicas"] >= 2, f"{name}: one replica cannot survive a rollout"
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        [container] = pod["containers"]
        assert container["args"] == [name.removeprefix("polder-")]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert spec["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        assert name in pdbs and name in services
        selector = pdbs[name]["spec"]["selector"]["matchLabels"]
        assert selector.items() <= spec["template"]["metadata"]["labels"].items()


def test_the_operator_rule_and_service_monitor_exist() -> None:
    folder = DEPLOY / "kubernetes" / "monitoring"
    kinds = {d["kind"] for f in ("servicemonitor.yaml", "rules.yaml") for d in load_all(folder / f)}
    assert kinds == {"ServiceMonitor", "PrometheusRule"}
