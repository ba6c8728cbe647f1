import pytest

from polder.cli import main
from polder.common.auth import Role, verify_token
from polder.common.settings import Settings


def test_token_prints_a_token_the_services_accept(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--role", "driver", "--sub", "d42"]) == 0
    token = capsys.readouterr().out.strip()
    principal = verify_token(Settings(), token)
    assert principal.role is Role.DRIVER and principal.sub == "d42"


def test_token_in_production_without_a_key_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLDER_MODE", "production")
    monkeypatch.delenv("POLDER_JWT_SECRET", raising=False)
    with pytest.raises(SystemExit, match="POLDER_JWT_SECRET"):
        main(["token", "--role", "operator", "--sub", "ops"])


@pytest.mark.parametrize("size", ["1", "3"])
def test_a_pool_too_small_to_work_is_refused(monkeypatch: pytest.MonkeyPatch, size: str) -> None:
    """The matcher holds three connections for good: fewer than four would hang it."""
    monkeypatch.setenv("POLDER_DB_POOL_SIZE", size)
    with pytest.raises(SystemExit, match="POLDER_DB_POOL_SIZE must be 0 .* or at least 4"):
        main(["token", "--role", "operator", "--sub", "ops"])  # reads the settings first


@pytest.mark.parametrize("size", ["0", "4"])
def test_a_pool_of_the_default_or_four_is_taken(monkeypatch: pytest.MonkeyPatch, size: str) -> None:
    monkeypatch.setenv("POLDER_DB_POOL_SIZE", size)
    assert Settings().db_pool_size == int(size)


def test_unknown_role_is_refused() -> None:
    with pytest.raises(SystemExit):
        main(["token", "--role", "admin", "--sub", "x"])


def test_serve_needs_its_infrastructure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POLDER_DATABASE_URL", raising=False)
    monkeypatch.delenv("POLDER_KAFKA_BOOTSTRAP", raising=False)
    with pytest.raises(SystemExit, match="POLDER_DATABASE_URL"):
        main(["serve", "location"])
