"""The API key: when API_KEY is set, inference over every door needs it, as `X-API-Key` or as
`Authorization: Bearer` (HTTP headers, or gRPC metadata of the same names)."""

from __future__ import annotations

import secrets
from collections.abc import Mapping

from service.faults import Unauthenticated
from service.settings import Settings

BEARER = "bearer "


def expected(settings: Settings) -> bytes | None:
    """API_KEY as the bytes `check` compares with; None when no key is set."""
    return settings.api_key.get_secret_value().encode() if settings.api_key else None


def require(headers: Mapping[str, str], key: bytes) -> None:
    """Unauthenticated (401) unless `headers` (HTTP's, or gRPC's metadata: names in lower
    case) carry `key`."""
    check(given(headers.get("x-api-key"), headers.get("authorization")), key)


def given(x_api_key: str | None, authorization: str | None) -> str:
    """The key a caller gave: X-API-Key, else a Bearer token, else none ("")."""
    if x_api_key is not None:
        return x_api_key
    if authorization and authorization.lower().startswith(BEARER):
        return authorization[len(BEARER) :].strip()
    return ""


def check(key: str, expected: bytes) -> None:
    """Unauthenticated (401) unless `key` is the expected one."""
    # compare_digest takes as long whatever the key, so timing does not reveal it.
    if not key or not secrets.compare_digest(key.encode(), expected):
        raise Unauthenticated()
