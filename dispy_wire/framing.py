"""Length-prefixed frames, sans-I/O.

A connection starts with the 4-byte `PREAMBLE` from each side, then carries
frames: a 4-byte big-endian body length followed by the body. The decoder is
push/pull: `feed(data)` only buffers, `next_frame()` returns one body or
`NEED_DATA`. A frame longer than `max_size` is refused from its header alone,
before any of it is buffered, so a peer cannot make us allocate it.
"""

from __future__ import annotations

import struct
from typing import Final

from .errors import ErrorCode, RemoteWireError

PREAMBLE: Final = b"DSH\x01"
HEADER: Final = struct.Struct(">I")
DEFAULT_MAX_SIZE: Final = 64 * 1024 * 1024
#: largest frame before login: a Hello (with a node's interface addresses) fits many times over, a flood does not
PRELOGIN_MAX_SIZE: Final = 8 * 1024


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


#: returned by `FrameDecoder.next_frame` when the buffer holds no whole frame
NEED_DATA: Final = _NeedData()


def encode_frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


class FrameDecoder:
    """Splits a byte stream into frame bodies.

    Args:
        max_size: largest body accepted, in bytes.
        expect_preamble: whether the stream starts with `PREAMBLE`.
    """

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE, expect_preamble: bool = True) -> None:
        self.max_size = max_size
        self._buf = bytearray()
        self._pos = 0
        self._need_preamble = expect_preamble

    def feed(self, data: bytes) -> None:
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def next_frame(self) -> bytes | _NeedData:
        """Returns the next whole body, or `NEED_DATA`.

        Raises:
            RemoteWireError: NOT_DISPY for a wrong preamble, TOO_LARGE for a
                header announcing more than `max_size`.
        """
        buf, pos = self._buf, self._pos
        if self._need_preamble:
            have = bytes(buf[pos : pos + len(PREAMBLE)])
            if have != PREAMBLE[: len(have)]:
                raise RemoteWireError(
                    ErrorCode.NOT_DISPY, f"not a dispy-shared peer (first bytes {have!r})"
                )
            if len(have) < len(PREAMBLE):
                return NEED_DATA
            pos += len(PREAMBLE)
            self._pos = pos
            self._need_preamble = False
        if len(buf) - pos < HEADER.size:
            return NEED_DATA
        (size,) = HEADER.unpack_from(buf, pos)
        if size > self.max_size:
            raise RemoteWireError(
                ErrorCode.TOO_LARGE,
                f"message of {size} bytes exceeds the limit of {self.max_size} bytes",
            )
        end = pos + HEADER.size + size
        if len(buf) < end:
            return NEED_DATA
        body = bytes(buf[pos + HEADER.size : end])
        self._pos = end
        # Compact once the consumed prefix dominates, so a long-lived
        # connection does not keep every byte it ever received.
        if end > 65536 and end * 2 > len(buf):
            del buf[:end]
            self._pos = 0
        return body

    def frames(self) -> list[bytes]:
        """Every whole body buffered so far."""
        out: list[bytes] = []
        while True:
            frame = self.next_frame()
            if frame is NEED_DATA:
                return out
            assert isinstance(frame, bytes)
            out.append(frame)
