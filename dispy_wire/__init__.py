"""dispy-shared's wire protocol: frames, messages, handshake, errors (no I/O)."""

from .errors import ErrorCode, LocalWireError, RemoteWireError, WireError
from .framing import DEFAULT_MAX_SIZE, NEED_DATA, PREAMBLE, FrameDecoder, encode_frame
from .handshake import ChannelBinding, HandshakeState, Peer, PeerHandshake, Role, ServerHandshake
from .messages import PROTOCOL_VERSION, Message, decode, encode
from .status import JobStatus

__all__ = [
    "ChannelBinding",
    "DEFAULT_MAX_SIZE",
    "NEED_DATA",
    "PREAMBLE",
    "PROTOCOL_VERSION",
    "ErrorCode",
    "FrameDecoder",
    "HandshakeState",
    "JobStatus",
    "LocalWireError",
    "Message",
    "Peer",
    "PeerHandshake",
    "RemoteWireError",
    "Role",
    "ServerHandshake",
    "WireError",
    "decode",
    "encode",
    "encode_frame",
]
