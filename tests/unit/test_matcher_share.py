"""What the matcher process shares with the API process: metrics (through a file), settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from polder.common.children import MergedRegistry, _pid_namespace, settings_env, share_folder
from polder.common.settings import Settings
from polder.dispatch.metrics import DispatchMetrics


def test_api_and_matcher_metrics_are_summed_by_name_and_labels(tmp_path: Path) -> None:
    api, matcher = DispatchMetrics(CollectorRegistry()), DispatchMetrics(CollectorRegistry())
    api.offers.labels("accepted").inc(3)
    matcher.offers.labels("made").inc(5)
    matcher.offers.labels("accepted").inc(1)  # e.g. counted by a restarted API: summed
    matcher.solve_time.observe(0.02)
    matcher.available_workers.set(42)
    api.http_requests.labels("/v1/orders", "POST", "201").inc()
    file = tmp_path / "metrics.prom"
    file.write_bytes(generate_latest(matcher.registry))
    text = generate_latest(MergedRegistry(api.registry, file)).decode()
    assert 'polder_dispatch_offers_total{outcome="made"} 5.0' in text
    assert 'polder_dispatch_offers_total{outcome="accepted"} 4.0' in text
    assert "polder_dispatch_batch_solve_seconds_count 1.0" in text
    assert 'polder_dispatch_batch_solve_seconds_bucket{le="0.025"} 1.0' in text
    assert "polder_dispatch_available_workers 42.0" in text
    assert 'polder_http_requests_total{method="POST",route="/v1/orders",status="201"} 1.0' in text
    assert text.count("# TYPE polder_dispatch_offers_total counter") == 1


def test_without_a_matcher_file_the_api_shows_its_own(tmp_path: Path) -> None:
    api = DispatchMetrics(CollectorRegistry())
    api.offers.labels("declined").inc()
    text = generate_latest(MergedRegistry(api.registry, tmp_path / "none.prom")).decode()
    assert 'polder_dispatch_offers_total{outcome="declined"} 1.0' in text


def test_a_child_gets_the_same_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(namespace="abc", batch_window_s=0.25, database_url="postgresql://x/y")
    env = settings_env(settings)
    assert env["POLDER_NAMESPACE"] == "abc" and env["POLDER_BATCH_WINDOW_S"] == "0.25"
    for name, value in env.items():
        if name.startswith("POLDER_"):
            monkeypatch.setenv(name, value)
    assert Settings() == settings


def test_a_counters_created_sample_is_named_once(tmp_path: Path) -> None:
    """The text format gives ``_created`` a family of its own: merged into ours, not repeated
    (promtool refuses a second HELP line for a name)."""
    own, helper = DispatchMetrics(CollectorRegistry()), DispatchMetrics(CollectorRegistry())
    own.offers.labels("made").inc()
    helper.offers.labels("made").inc(2)
    helper.offers.labels("expired").inc()
    file = tmp_path / "metrics.prom"
    file.write_bytes(generate_latest(helper.registry))
    text = generate_latest(MergedRegistry(own.registry, file)).decode()
    assert text.count("# HELP polder_dispatch_offers_created ") == 1
    assert 'polder_dispatch_offers_total{outcome="made"} 3.0' in text
    assert 'polder_dispatch_offers_created{outcome="expired"}' in text


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_share_folder_of_a_killed_process_is_removed_at_the_next_start(tmp_path: Path) -> None:
    # A process SIGKILLed before its folder's removal leaves it behind; the next start of a
    # helper with the same prefix removes it, and only it.
    ns = _pid_namespace()
    orphan = tmp_path / f"polder-matcher-{_dead_pid()}-{ns}-abc"
    (orphan / "sub").mkdir(parents=True)
    (orphan / "metrics.prom").write_text("x")
    kept = [
        tmp_path / f"polder-matcher-{os.getpid()}-{ns}-def",  # a running process's own
        tmp_path / f"polder-matcher-{_dead_pid()}-1-ghi",  # another pid namespace's (container)
        tmp_path / "polder-matcher-xyz",  # no pid in its name
        tmp_path / f"polder-matcher-{_dead_pid()}-abc",  # no namespace (made before they had one)
        tmp_path / f"polder-traces-{_dead_pid()}-{ns}-jkl",  # another helper's: its start, not ours
        tmp_path / f"polder-matcher-\u00b2-{ns}-x",  # a digit int() refuses
        tmp_path / f"polder-matcher-{'9' * 20}-{ns}-x",  # beyond any pid
        tmp_path / f"polder-matcher-0-{ns}-x",
    ]
    for path in kept:
        path.mkdir()
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / f"polder-matcher-{_dead_pid()}-{ns}-link"
    link.symlink_to(target, target_is_directory=True)
    with share_folder("polder-matcher-", parent=tmp_path) as share:
        assert share is not None and share.is_dir()
        assert share.name.startswith(f"polder-matcher-{os.getpid()}-{ns}-")
        assert not orphan.exists()
        assert all(path.is_dir() for path in kept)
        assert link.is_symlink() and target.is_dir()
    assert not share.exists()
    assert all(path.is_dir() for path in kept)


def test_no_helper_no_share_folder(tmp_path: Path) -> None:
    with share_folder("polder-matcher-", wanted=False, parent=tmp_path) as share:
        assert share is None
    assert list(tmp_path.iterdir()) == []
