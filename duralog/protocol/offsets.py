"""Offsets (PROTOCOL.md 8).

An offset token is ``<16 digits>_<16 digits>``: a zero epoch part and the
stream position (bytes of stored payload before this point). Zero-padding
makes lexicographic order equal numeric order, and the token contains none of
the characters 8 forbids (``, & = ? /``). The all-zero token is the start of a
stream, the same shape the reference server and the conformance suite use.
"""

from __future__ import annotations

import re

from .errors import ProtocolError

START = "-1"  # sentinel: beginning of the stream (8)
NOW = "now"  # sentinel: current tail (8)
ZERO = "0000000000000000_0000000000000000"
MAX_POSITION = 10**16 - 1

_TOKEN = re.compile(r"([0-9]{16})_([0-9]{16})")  # ASCII digits only: \d is Unicode


def format_offset(position: int) -> str:
    """The token for a stream position."""
    return f"0000000000000000_{position:016d}"


def parse_offset(token: str) -> int:
    """The position of a server-minted token; ProtocolError(400) for anything else."""
    m = _TOKEN.fullmatch(token)
    if m is None or m.group(1) != "0000000000000000":
        raise ProtocolError(400, "malformed offset")
    return int(m.group(2))


def is_offset_token(token: str) -> bool:
    m = _TOKEN.fullmatch(token)
    return m is not None and m.group(1) == "0000000000000000"
