"""The client's faults that every front door can meet, each with one message, and the one
formatter of validation errors. Raised by the data plane and the codecs (which import nothing
of the doors); each door answers them with the status and shape of the one fault table,
service/errors.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class CodecError(ValueError):
    """A body that is not a well-formed request of its protocol: the client's mistake (400)."""


class BodyTooLarge(CodecError):
    """A body over the cap, as sent or once inflated (413)."""


class UnfitInput(ValueError):
    """Well-formed input the model cannot take: its shape, datatype or values (422)."""


class NoRows(UnfitInput):
    """A request with nothing to classify (422)."""


class Unauthenticated(Exception):
    """No API key, or the wrong one (401)."""

    def __init__(self) -> None:
        super().__init__("missing or wrong API key")


class TooManyRows(ValueError):
    """More instances in one request than one model call takes (413)."""

    def __init__(self, max_rows: int):
        super().__init__(f"more than {max_rows} instances in one request (MAX_BATCH_SIZE)")


class NonFiniteOutput(UnfitInput):
    """Extreme (if finite) inputs overflowed inside the model: the input's doing (422)."""

    def __init__(self) -> None:
        super().__init__("the model's output is not finite for these inputs")


# Where a value sits in a request, as its sender wrote it; FastAPI prefixes these.
_SOURCES = ("body", "query", "path", "header", "cookie")


def validation_message(errors: Iterable[Mapping[str, Any]], tags: Iterable[str] = ()) -> str:
    """Pydantic's (or FastAPI's) errors in one line, each located where the client put the value
    (`features[0]`, `inputs[0].shape`), never echoing the (possibly huge) input. A location that
    starts with one of `tags` (a union's, which pydantic puts there and the client never sent)
    starts after it."""
    tags = set(tags)
    messages = []
    for error in errors:
        loc = list(error["loc"])
        if error["type"] == "json_invalid":  # FastAPI's location is the character's position
            where = f" at character {loc[-1]}" if len(loc) > 1 and isinstance(loc[-1], int) else ""
            messages.append(
                f"body is not valid JSON: {error.get('ctx', {}).get('error', 'syntax error')}{where}"
            )
            continue
        if loc and loc[0] in _SOURCES:
            loc = loc[1:] or loc
        if len(loc) >= 2 and loc[0] in tags:
            loc = loc[1:]
        field = _field_name(loc)
        messages.append(f"{field or 'body'}: {error['msg']}")
    return "; ".join(messages)


def _field_name(path: list) -> str:
    """["instances", 0, 1] -> "instances[0][1]"."""
    name = ""
    for part in path:
        name += f"[{part}]" if isinstance(part, int) else f".{part}" if name else str(part)
    return name
