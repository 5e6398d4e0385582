"""JSON answers as the service sends them: ending in a newline, so a shell prompt after `curl`
starts on a line of its own."""

from __future__ import annotations

from typing import Any

from fastapi import responses


class JSONResponse(responses.JSONResponse):
    def render(self, content: Any) -> bytes:
        return super().render(content) + b"\n"
