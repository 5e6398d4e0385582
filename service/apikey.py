"""The API key: when API_KEY is set, inference over every door needs it, as `X-API-Key` or as
`Authorization: Bearer` (HTTP headers, or gRPC metadata of the same names)."""

from __future__ import annotations

import secrets

from service.faults import Unauthenticated

BEARER = "bearer "


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
