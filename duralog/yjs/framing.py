"""lib0 framing of Yjs updates (YJS-PROTOCOL.md 7).

Every update a client sends is prefixed with its length as a lib0 variable-length
unsigned integer (7 bits per byte, low bits first, high bit = more bytes follow),
so several updates concatenated by a batching producer stay separable. The server
stores the frames as sent and readers split them again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

#: Longest varint we accept for a frame length: 2**63 needs 10 bytes.
_MAX_VARINT_BYTES = 10


class FramingError(ValueError):
    """Bytes that are not a sequence of whole lib0 frames."""


def write_var_uint(value: int) -> bytes:
    """lib0 ``writeVarUint`` (7.1): 0 -> 00, 127 -> 7f, 128 -> 80 01, 300 -> ac 02."""
    if value < 0:
        raise ValueError("varuint must not be negative")
    out = bytearray()
    while value > 0x7F:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def read_var_uint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """The varuint at ``pos`` and the position after it."""
    value = 0
    shift = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos + i >= len(data):
            raise FramingError("a frame length is cut short")
        byte = data[pos + i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos + i + 1
        shift += 7
    raise FramingError("a frame length is longer than 10 bytes")


def frame(update: bytes) -> bytes:
    """One update, length-prefixed (lib0 ``writeVarUint8Array``, 7.2)."""
    return write_var_uint(len(update)) + update


def frame_all(updates: Iterable[bytes]) -> bytes:
    return b"".join(frame(u) for u in updates)


def iter_frames(data: bytes) -> Iterator[bytes]:
    """The updates in lib0-framed ``data`` (7.3); FramingError if it is not whole frames."""
    view = memoryview(data)
    pos = 0
    end = len(data)
    while pos < end:
        length, pos = read_var_uint(view, pos)
        if pos + length > end:
            raise FramingError("a frame is longer than the bytes that follow its length")
        yield bytes(view[pos:pos + length])
        pos += length


def split_frames(data: bytes) -> list[bytes]:
    return list(iter_frames(data))


class FrameBuffer:
    """Whole updates out of bytes that arrive in pieces: a frame cut between two reads
    waits for the rest (our server never cuts one, 5.4; this is for any server)."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._rest + data if self._rest else data
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        while pos < end:
            try:
                length, start = read_var_uint(buf, pos)
            except FramingError:
                if end - pos >= _MAX_VARINT_BYTES:
                    raise
                break  # the length itself is cut
            if start + length > end:
                break
            out.append(buf[start:start + length])
            pos = start + length
        self._rest = buf[pos:]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._rest)
