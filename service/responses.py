"""JSON answers as the service sends them, over every HTTP door: ending in a newline, so a
shell prompt after `curl` starts on a line of its own."""

from __future__ import annotations

from typing import Any

from fastapi import responses


class JSONResponse(responses.JSONResponse):
    """`content` as JSON and a newline; bytes are JSON already encoded (a protocol codec's
    answer, pydantic's serialization), sent as they are."""

    def render(self, content: Any) -> bytes:
        return (content if isinstance(content, bytes) else super().render(content)) + b"\n"
