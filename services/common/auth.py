"""Bearer JWT auth. Roles ``driver``, ``customer``, ``operator``; the subject is the identity.

HS256 is pinned: a token signed with anything else, or with ``alg: none``, is refused. ``exp``,
``iss`` and ``aud`` are required and checked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated

import jwt
from fastapi import Depends, Request

from polder.common.errors import ApiError
from polder.common.settings import Settings
from polder.common.throttle import Budget, Throttle

ALGORITHM = "HS256"


class Role(StrEnum):
    DRIVER = "driver"
    CUSTOMER = "customer"
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class Principal:
    role: Role
    sub: str

    @property
    def key(self) -> str:
        """Whose budget a request spends: one per token identity (role and subject)."""
        return f"{self.role.value}:{self.sub}"


class AuthError(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(401, "unauthorized", message)


def issue_token(settings: Settings, role: Role | str, sub: str, ttl_s: int | None = None) -> str:
    now = int(time.time())
    claims = {
        "sub": sub,
        "role": str(Role(role)),
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": now,
        "exp": now + (ttl_s if ttl_s is not None else settings.token_ttl_s),
    }
    return jwt.encode(claims, settings.signing_key, algorithm=ALGORITHM)


# Verified tokens, until their ``exp``: a driver's app sends the same token with every request,
# and decoding + verifying it again each time was ~8 % of a busy service's CPU. Keyed by the
# token and what it was checked against; bounded by clearing it when full.
_VERIFIED: dict[tuple[str, str, str, str], tuple[Principal, float]] = {}
_VERIFIED_MAX = 100_000


def verify_token(settings: Settings, token: str) -> Principal:
    key = (token, settings.signing_key, settings.jwt_audience, settings.jwt_issuer)
    hit = _VERIFIED.get(key)
    if hit is not None:
        if time.time() < hit[1]:
            return hit[0]
        del _VERIFIED[key]
    principal, exp = _verify(settings, token)
    if len(_VERIFIED) >= _VERIFIED_MAX:
        _VERIFIED.clear()
    _VERIFIED[key] = (principal, exp)
    return principal


def _verify(settings: Settings, token: str) -> tuple[Principal, float]:
    try:
        claims = jwt.decode(
            token,
            settings.signing_key,
            algorithms=[ALGORITHM],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={"require": ["exp", "iss", "aud", "sub"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise AuthError("token expired") from exc
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"invalid token: {exc}") from exc
    try:
        role = Role(str(claims.get("role", "")))
    except ValueError as exc:
        raise AuthError("token has no valid role") from exc
    sub = claims["sub"]
    if not isinstance(sub, str) or not sub:
        raise AuthError("token has no subject")
    return Principal(role=role, sub=sub), float(claims["exp"])


def bearer_token(authorization: str | None) -> str:
    if not authorization:
        raise AuthError("missing bearer token")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("Authorization header must be 'Bearer <token>'")
    return token.strip()


def charge(app_state: object, principal: Principal, budget: Budget = Budget.API) -> None:
    """Spend one request of the token's budget in this service (429 when it is spent)."""
    throttle: Throttle | None = getattr(app_state, "throttle", None)
    if throttle is not None:
        throttle.charge(principal.key, budget)


async def authenticate(request: Request) -> Principal:
    """The caller, whose token has budget left for this request."""
    settings: Settings = request.app.state.settings
    principal = verify_token(settings, bearer_token(request.headers.get("authorization")))
    charge(request.app.state, principal)
    return principal


async def authenticate_reporting(request: Request) -> Principal:
    """The caller of a reporting route, charged to the token's reporting budget instead."""
    settings: Settings = request.app.state.settings
    principal = verify_token(settings, bearer_token(request.headers.get("authorization")))
    charge(request.app.state, principal, Budget.REPORTS)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(authenticate)]
ReportingPrincipal = Annotated[Principal, Depends(authenticate_reporting)]


def require_role(principal: Principal, *roles: Role) -> None:
    if principal.role not in roles:
        allowed = ", ".join(r.value for r in roles)
        raise ApiError(
            403, "forbidden", f"role {principal.role.value} may not do this ({allowed} only)"
        )


def require_self_or_operator(principal: Principal, driver_id: str) -> None:
    """A worker's own records: the worker itself, or an operator."""
    if principal.role is Role.OPERATOR:
        return
    if principal.role is not Role.DRIVER or principal.sub != driver_id:
        raise ApiError(403, "forbidden", "only the worker itself or an operator")


def require_self(principal: Principal, role: Role, subject_id: str) -> None:
    """The principal must have ``role`` and be the very subject named in the path."""
    require_role(principal, role)
    if principal.sub != subject_id:
        raise ApiError(403, "forbidden", f"a {role.value} may only act as itself")
