"""Protocol errors: a status, a one-line reason, and any headers the spec asks for."""

from __future__ import annotations


class ProtocolError(Exception):
    """A request the protocol says to refuse.

    ``reason`` is a single line meant for the response body; ``headers`` carries
    the extra response headers some refusals require (for example
    ``Stream-Closed`` on a 409 for a closed stream, PROTOCOL.md 5.2).
    """

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}

    def __repr__(self) -> str:
        return f"ProtocolError({self.status}, {self.reason!r})"


def bad_request(reason: str) -> ProtocolError:
    return ProtocolError(400, reason)
