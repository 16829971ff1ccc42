"""The one error type of the HTTP API: a status, a one-line message, optional headers."""

from __future__ import annotations


class ApiError(Exception):
    """A request the client can fix (4xx) or a busy server (503/504): HTTP ``status`` and a
    one-line message, answered as ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def one_line(text: object, limit: int = 300) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed, at most
    ``limit`` characters: what an error message may carry back to a client."""
    return " ".join(str(text).split())[:limit]
