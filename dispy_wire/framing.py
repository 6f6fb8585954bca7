"""Length-prefixed frames, sans-I/O.

A connection starts with the 4-byte `PREAMBLE` from each side, then carries
frames: a 4-byte big-endian body length followed by the body. The decoder is
push/pull: `feed(data)` only buffers, `next_frame()` returns one body or
`NEED_DATA`. A frame longer than `max_size` is refused from its header alone,
before any of it is buffered, so a peer cannot make us allocate it.

A large frame (`LARGE` bytes and more) that is not whole when its header is
read is kept as the pieces fed, and joined once it is: each of its bytes is
copied once, where growing the buffer and cutting the body out of it copied
them several times (a result of some MiB crosses four such decoders on its
way to its client: benchmarks/large_results.py).
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
#: a frame body this long or longer, not whole yet, is gathered piece by piece (see above)
LARGE: Final = 64 * 1024
#: a piece of such a frame this long is kept as it came; a shorter one is copied onto the piece before it
_OWN_PIECE: Final = 4096


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
        #: a large frame's body being gathered: its pieces so far, while `_missing` bytes of it are to come; then
        #: `_whole`, the body joined, which comes before what `_buf` holds
        self._pieces: list[bytes | bytearray | memoryview] = []
        self._missing = 0
        self._whole: bytes | None = None

    def feed(self, data: bytes) -> None:
        if type(data) is not bytes:  # a buffer its owner may change: a gathered piece is kept, not copied
            data = bytes(data)
        rest: bytes | memoryview = data
        if self._missing:
            if len(data) < self._missing:
                self._gather(data)
                return
            view = memoryview(data)
            self._pieces.append(view[: self._missing])
            self._whole = b"".join(self._pieces)
            rest = view[self._missing :]
            self._pieces, self._missing = [], 0
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += rest

    def _gather(self, data: bytes) -> None:
        """Keeps a piece of a large frame's body; a small one is copied onto the last piece, so that a peer that
        sends a byte at a time makes us hold about what it sent, not an object per piece."""
        tail = self._pieces[-1]
        if len(data) >= _OWN_PIECE:
            self._pieces.append(data)
        elif type(tail) is bytearray and len(tail) < LARGE:
            tail += data
        else:
            self._pieces.append(bytearray(data))
        self._missing -= len(data)

    @property
    def buffered(self) -> int:
        """Bytes fed and not yet taken (but the header of a large frame being gathered)."""
        return len(self._buf) - self._pos + sum(map(len, self._pieces)) + len(self._whole or b"")

    def next_frame(self) -> bytes | _NeedData:
        """Returns the next whole body, or `NEED_DATA`.

        Raises:
            RemoteWireError: NOT_DISPY for a wrong preamble, TOO_LARGE for a
                header announcing more than `max_size`.
        """
        if self._whole is not None:
            body, self._whole = self._whole, None
            return body
        if self._pieces:
            return NEED_DATA
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
        start = pos + HEADER.size
        end = start + size
        if len(buf) < end:
            if size >= LARGE:  # the rest is gathered as fed; this buffer is left to its part of the body
                self._pieces, self._missing = [memoryview(buf)[start:]], end - len(buf)
                self._buf, self._pos = bytearray(), 0
            return NEED_DATA
        body = bytes(memoryview(buf)[start:end]) if size >= LARGE else bytes(buf[start:end])
        self._pos = end
        # Compact once the consumed prefix dominates, so a long-lived
        # connection does not keep every byte it ever received.
        if end > 65536 and end * 2 > len(buf):
            if end == len(buf):
                buf.clear()
            else:
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
