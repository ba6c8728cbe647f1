import base64
import time

import jwt
import orjson
import pytest
from pydantic import ValidationError

from polder.common.auth import AuthError, Principal, Role, issue_token, verify_token
from polder.common.settings import DEV_SIGNING_KEY, Settings

S = Settings(jwt_secret="k" * 64)


def claims(**over: object) -> dict[str, object]:
    now = int(time.time())
    base: dict[str, object] = {
        "sub": "d1",
        "role": "driver",
        "iss": "polder",
        "aud": "polder",
        "iat": now,
        "exp": now + 86_400,  # parametrize builds these at collection, long before the test runs
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def test_issued_token_verifies_to_its_role_and_subject() -> None:
    assert verify_token(S, issue_token(S, "operator", "ops-1")) == Principal(Role.OPERATOR, "ops-1")


@pytest.mark.parametrize(
    ("token_claims", "message"),
    [
        (claims(exp=int(time.time()) - 5), "expired"),
        (claims(aud="someone-else"), "audience"),
        (claims(iss="evil"), "issuer"),
        (claims(exp=None), "exp"),
        (claims(aud=None), "aud"),
        (claims(role="admin"), "role"),
        (claims(role=None), "role"),
        (claims(sub=""), "subject"),
    ],
)
def test_bad_claims_are_refused(token_claims: dict[str, object], message: str) -> None:
    token = jwt.encode(token_claims, S.signing_key, algorithm="HS256")
    with pytest.raises(AuthError, match=f"(?i){message}"):
        verify_token(S, token)


def test_wrong_key_other_algorithm_and_alg_none_are_refused() -> None:
    good = claims()
    for token in (
        jwt.encode(good, "another-key" * 8, algorithm="HS256"),
        jwt.encode(good, S.signing_key, algorithm="HS512"),
    ):
        with pytest.raises(AuthError):
            verify_token(S, token)
    header = base64.urlsafe_b64encode(orjson.dumps({"alg": "none", "typ": "JWT"})).rstrip(b"=")
    payload = base64.urlsafe_b64encode(orjson.dumps(good)).rstrip(b"=")
    with pytest.raises(AuthError):
        verify_token(S, (header + b"." + payload + b".").decode())


def test_tampered_payload_is_refused() -> None:
    token = issue_token(S, "driver", "d1")
    head, payload, sig = token.split(".")
    forged = base64.urlsafe_b64encode(orjson.dumps(claims(sub="d2"))).rstrip(b"=").decode()
    with pytest.raises(AuthError):
        verify_token(S, f"{head}.{forged}.{sig}")


def test_production_mode_requires_a_private_key() -> None:
    with pytest.raises(ValidationError, match="POLDER_JWT_SECRET"):
        Settings(mode="production")
    with pytest.raises(ValidationError, match="POLDER_JWT_SECRET"):
        Settings(mode="production", jwt_secret=DEV_SIGNING_KEY)
    with pytest.raises(ValidationError, match="32"):
        Settings(mode="production", jwt_secret="short")
    assert Settings(mode="production", jwt_secret="x" * 40).signing_key == "x" * 40


def test_settings_come_from_polder_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLDER_LOCATION_PORT", "9101")
    monkeypatch.setenv("POLDER_NAMESPACE", "abc")
    s = Settings()
    assert s.location_port == 9101
    assert s.topic("polder.dlq") == "polder.dlq.abc"
    assert s.db_schema("location") == "location_abc"
    assert Settings(namespace="").topic("polder.dlq") == "polder.dlq"
