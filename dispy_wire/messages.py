"""Every message of the protocol, and their encoding.

A message is a frozen, slotted dataclass with a numeric `TAG`; on the wire it
is the msgpack array `[TAG, field, field, ...]`. Records inside messages
(`JobSpec`, `JobResult`, ...) are `NamedTuple`s, which msgpack packs as arrays
without help. Control fields are plain msgpack types; user data (functions,
arguments, results) is opaque `bytes` that only clients and job processes
unpickle: the scheduler relays them untouched.

`decode` checks every field against the annotations, so a well-framed but
ill-typed message becomes a `RemoteWireError(BAD_MESSAGE)` at the edge instead
of an exception deep inside the scheduler.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple

import msgpack

from .errors import ErrorCode, LocalWireError, RemoteWireError
from .framing import HEADER, FrameDecoder, _NeedData, encode_frame
from .schema import checker_for

#: 2: SCRAM or certificate logins, results MAC'd, Ping, NodeHolds, ResultsRecorded;
#: 3: JobResult carries the node's measure of the job's CPU time and peak RSS (accounting); Restarting,
#: JobsKnown, NodeUnusable and NotLeader
PROTOCOL_VERSION = 3


# --------------------------------------------------------------------------
# Records carried inside messages


class JobSpec(NamedTuple):
    """One job submitted by a client."""

    job_id: int
    priority: int
    payload: bytes  # cloudpickle((args, kwargs)), opaque to the scheduler
    #: control fields for the node, e.g. {"timeout": seconds}: any value passes the wire's check, since the
    #: scheduler checks them itself (`JobOptions.from_wire`) and refuses a job with bad ones (BAD_REQUEST),
    #: not its client's whole message
    options: Any


class RunJob(NamedTuple):
    """One job dispatched to a node."""

    cluster_id: str
    job_id: int
    payload: bytes
    options: dict[str, Any]


class JobRef(NamedTuple):
    cluster_id: str
    job_id: int


class JobStart(NamedTuple):
    """Tells a client where and when one of its jobs started."""

    job_id: int
    node: str
    ip_addr: str
    time: float


class JobResult(NamedTuple):
    """The terminal outcome of one job, from the node through to the client."""

    cluster_id: str
    job_id: int
    status: int  # a `JobStatus` value
    result: bytes | None  # cloudpickle(result); None unless Finished
    stdout: bytes
    stderr: bytes
    exception: str  # remote traceback text, or why the job ended ('' if Finished)
    exception_type: str  # class name of the exception ('' if none)
    start_time: float
    end_time: float
    #: the job process's MAC (`result_mac`), passed on untouched; b"" on results the node or scheduler made
    mac: bytes = b""
    #: CPU seconds (user + system) the job's process used, as the node measured it (0: not measured)
    cpu_time: float = 0.0
    #: the job process's largest resident set, bytes, as the node measured it (0: not measured)
    max_rss: int = 0


class JobFile(NamedTuple):
    """A file a running job sends back to its client (`dispy_send_file`)."""

    cluster_id: str
    job_id: int
    name: str  # base name: the client writes it into the cluster's dest_path
    data: bytes
    mode: int
    mac: bytes = b""  # the job process's MAC (`result_mac`), passed on untouched


class NodeInfo(NamedTuple):
    """A node as a cluster's client sees it (for `cluster_status` and `NodeAllocate`)."""

    event: str  # "joined", "report" (its latest resources) or "left"
    name: str
    ip_addr: str
    cpus: int
    busy: int  # CPUs busy with anyone's jobs
    avail: dict[str, Any]  # cpu_percent, memory, disk, swap, platform ... from its reports


# --------------------------------------------------------------------------
# Messages


class Message:
    """Base of all messages; subclasses are registered with `@message(tag)`."""

    __slots__ = ()
    TAG: ClassVar[int]


_REGISTRY: dict[int, tuple[type[Message], list[Callable[[Any], Any]]]] = {}
_FIELDS: dict[type[Message], tuple[str, ...]] = {}
_M = typing.TypeVar("_M", bound=type[Message])


@typing.dataclass_transform(frozen_default=True)
def message(tag: int) -> Callable[[_M], _M]:
    def register(cls: _M) -> _M:
        if tag in _REGISTRY:
            raise LocalWireError(f"tag {tag} used twice")
        dc = dataclasses.dataclass(frozen=True, slots=True)(cls)
        names = tuple(f.name for f in dataclasses.fields(typing.cast(Any, dc)))
        hints = typing.get_type_hints(dc)
        dc.TAG = tag
        _REGISTRY[tag] = (dc, [checker_for(hints[name]) for name in names])
        _FIELDS[dc] = names
        return typing.cast(_M, dc)

    return register


# -- handshake ---------------------------------------------------------------


@message(1)
class Challenge(Message):
    """Scheduler → peer, first frame: the protocol and the login mechanism it expects.

    `mechanism` is SCRAM-SHA-256-PLUS when the scheduler sees TLS (the login
    is then bound to the channel), SCRAM-SHA-256 otherwise.
    """

    version: int
    server: str
    mechanism: str


#: interface addresses a node lists in its Hello: enough for `nodes` patterns, and the Hello stays within
#: the pre-login frame limit (64 IPv6 addresses are under 3 KiB)
HELLO_MAX_ADDRESSES = 64


@message(2)
class Hello(Message):
    """Peer → scheduler: who I am, how I prove it, and the SCRAM client-first message.

    `mechanism` is the Challenge's SCRAM mechanism, or EXTERNAL: the login is
    the client certificate of this TLS connection, and `client_first` is empty.
    """

    version: int
    role: str  # "client" or "node"
    name: str  # user name for clients, node name for nodes (also SCRAM's user name)
    client_first: str
    info: dict[str, Any]  # nodes: cpus, platform, heartbeat; clients: host, pid
    mechanism: str


@message(6)
class ServerFirst(Message):
    """Scheduler → peer: the SCRAM server-first message (nonce, salt, iterations)."""

    server_first: str


@message(7)
class ClientProof(Message):
    """Peer → scheduler: the SCRAM client-final message (channel binding and proof)."""

    client_final: str


@message(3)
class Welcome(Message):
    """Scheduler → peer: logged in. `server_final` proves the scheduler knows our verifier."""

    session: str
    info: dict[str, Any]
    server_final: str


@message(4)
class Refused(Message):
    """Fatal: the sender closes the connection after this frame."""

    code: str
    message: str


@message(46)
class NotLeader(Message):
    """Standby scheduler → peer, in the place of a Challenge: another scheduler leads; dial `leader`.

    The standby closes the connection after this frame. `leader` is the
    leader's address as host:port, or empty while none leads (a takeover
    is under way: try again shortly).
    """

    leader: str


@message(5)
class Error(Message):
    """Non-fatal: a request (named by `ref`) was refused; the connection lives."""

    code: str
    message: str
    ref: str


# -- either way, after login ------------------------------------------------


@message(8)
class Ping(Message):
    """A sign of life on an otherwise idle link (`dispy_wire.liveness`); the receiver only notes it."""


@message(9)
class Restarting(Message):
    """Scheduler → every logged-in peer, as it stops on SIGTERM: it is coming back, this is no failure.

    Everything it accepted is in its journal. A node keeps its jobs running
    (its scheduler grace) and redials; a client waits quietly and reconnects,
    resubmitting nothing the scheduler accepted. `back_within` is how many
    seconds the scheduler expects to be away (0: unknown), a hint for the
    peer's first redial, never a promise.
    """

    reason: str
    back_within: float


# -- client → scheduler ------------------------------------------------------


@message(10)
class OpenCluster(Message):
    """Opens a cluster, or re-attaches to it when `cluster_id` is known."""

    cluster_id: str
    name: str
    computation: bytes  # opaque to the scheduler; the node's zygote loads it
    reentrant: bool
    options: dict[str, Any]


@message(11)
class SubmitJobs(Message):
    cluster_id: str
    jobs: list[JobSpec]


@message(12)
class CancelJobs(Message):
    cluster_id: str
    job_ids: list[int]


@message(13)
class AckResults(Message):
    """The client holds these results; the scheduler may forget them."""

    cluster_id: str
    job_ids: list[int]


@message(14)
class CloseCluster(Message):
    cluster_id: str
    terminate: bool


@message(15)
class GetStatus(Message):
    ref: str


@message(17)
class PutFile(Message):
    """A file for the cluster's directory on one node (`send_file`): client → scheduler → node."""

    cluster_id: str
    ref: str
    node: str  # name or address; the scheduler resolves it
    name: str
    data: bytes
    mode: int


@message(18)
class FilePutDone(Message):
    """Whether a `PutFile` landed: node → scheduler → client."""

    ref: str
    ok: bool
    message: str


@message(19)
class ResetupNode(Message):
    """Load the cluster again on the node(s) called `node`, with this computation (a new `setup`)."""

    cluster_id: str
    node: str
    computation: bytes


@message(16)
class SetNodeCpus(Message):
    """How many of a node's CPUs (by name) the cluster may use; a negative value drops the setting."""

    cluster_id: str
    node: str
    cpus: int


# -- scheduler → client ------------------------------------------------------


@message(20)
class ClusterOpened(Message):
    cluster_id: str
    resumed: bool


@message(28)
class JobsKnown(Message):
    """Right after a resumed `ClusterOpened`: every job of the cluster the scheduler knows, whatever its state.

    A job the client counts as accepted and that is not listed was never
    accepted (its program stopped before the scheduler confirmed it, as
    `recover_jobs` finds) or was lost: the client ends it instead of waiting
    for a result that cannot come.
    """

    cluster_id: str
    job_ids: list[int]


@message(21)
class JobsAccepted(Message):
    cluster_id: str
    job_ids: list[int]


@message(22)
class JobsStarted(Message):
    cluster_id: str
    starts: list[JobStart]


@message(23)
class JobResults(Message):
    cluster_id: str
    results: list[JobResult]


@message(24)
class Status(Message):
    ref: str
    status: dict[str, Any]


@message(25)
class ClusterClosed(Message):
    cluster_id: str


@message(27)
class NodeUpdates(Message):
    """Nodes joining, reporting and leaving, for clusters opened with options["node_updates"]."""

    cluster_id: str
    nodes: list[NodeInfo]


@message(29)
class NodeUnusable(Message):
    """The cluster will not run on this node: its set-up failed there, or the node cannot load it
    (another Python or cloudpickle). Sent to the cluster's client whether or not it follows nodes."""

    cluster_id: str
    node: str
    ip_addr: str
    reason: str


@message(26)
class JobFiles(Message):
    """Files sent by running jobs; they arrive before those jobs' results."""

    files: list[JobFile]


# -- node → scheduler --------------------------------------------------------


@message(30)
class Heartbeat(Message):
    """Resource report: cpus offered, cpu percent, memory, disk, swap."""

    avail: dict[str, Any]


@message(31)
class NodeResults(Message):
    results: list[JobResult]


@message(33)
class NodeFiles(Message):
    """Files sent by running jobs (`dispy_send_file`), for their clients."""

    files: list[JobFile]


@message(34)
class NodeStarts(Message):
    """Jobs this node started, from its queue, since its last report (a node whose Hello said `queues`)."""

    jobs: list[JobRef]


@message(35)
class NodeReturned(Message):
    """Jobs this node was asked to give back (`RecallJobs`) and had not started: it never will."""

    jobs: list[JobRef]


@message(32)
class ClusterFailed(Message):
    """The cluster's set-up failed on this node; it will run none of its jobs."""

    cluster_id: str
    message: str


# -- scheduler → node --------------------------------------------------------


@message(40)
class LoadCluster(Message):
    cluster_id: str
    user: str
    computation: bytes
    options: dict[str, Any]


@message(41)
class RunJobs(Message):
    jobs: list[RunJob]


@message(42)
class KillJobs(Message):
    jobs: list[JobRef]


@message(47)
class RecallJobs(Message):
    """Give back these jobs if they have not started (the node was drained, or given fewer CPUs): `NodeReturned`."""

    jobs: list[JobRef]


@message(43)
class UnloadCluster(Message):
    cluster_id: str


@message(44)
class ResultsRecorded(Message):
    """The scheduler has these jobs' terminal results (journaled): the node may forget them."""

    jobs: list[JobRef]


@message(45)
class NodeHolds(Message):
    """What a node still holds from an earlier session (jobs running or ended, clusters loaded).

    Sent first after Welcome by a node whose Hello said `holds`: a list of
    any length would not fit the small frames allowed before login.
    """

    jobs: list[JobRef]
    clusters: list[str]


# --------------------------------------------------------------------------
# Encoding


def encode(msg: Message) -> bytes:
    """Returns the frame (header included) for one message."""
    try:
        fields = [getattr(msg, name) for name in _FIELDS[type(msg)]]
        body: bytes = msgpack.packb([msg.TAG, *fields], use_bin_type=True)
        return encode_frame(body)
    except (TypeError, ValueError, KeyError) as exc:
        raise LocalWireError(f"cannot encode {msg!r}: {exc}") from exc


def pack_result(result: JobResult) -> bytes:
    """One result as a `JobResults` message carries it, a msgpack array (the scheduler's journal keeps these
    very bytes: `encode_results` sends them on as they are)."""
    return msgpack.packb(result, use_bin_type=True)  # type: ignore[no-any-return]


def encode_results(cluster_id: str, packed: Sequence[bytes]) -> bytes:
    """The frame of `JobResults(cluster_id, results)` from its results already packed (`pack_result`): the
    same bytes as `encode` makes, without packing the results again."""
    head = _RESULTS_TAG + msgpack.packb(cluster_id, use_bin_type=True) + _array_header(len(packed))
    return b"".join([HEADER.pack(len(head) + sum(map(len, packed))), head, *packed])


def _array_header(n: int) -> bytes:
    """msgpack's header of an array of `n` items (fixarray, array 16 or array 32)."""
    if n < 16:
        return bytes((0x90 | n,))
    return b"\xdc" + n.to_bytes(2, "big") if n < 1 << 16 else b"\xdd" + n.to_bytes(4, "big")


#: a JobResults message is the array [TAG, cluster id, results]
_RESULTS_TAG = _array_header(3) + msgpack.packb(JobResults.TAG)


def next_message(decoder: FrameDecoder) -> Message | _NeedData:
    """The next message buffered in `decoder`, or `NEED_DATA`.

    Raises:
        RemoteWireError: BAD_MESSAGE for a well-framed bad message (the stream
            stays in sync), NOT_DISPY or TOO_LARGE for a broken stream.
    """
    frame = decoder.next_frame()
    if isinstance(frame, _NeedData):
        return frame
    return decode(frame)


def decode(body: bytes) -> Message:
    """Parses one frame body.

    Raises:
        RemoteWireError: BAD_MESSAGE for anything but a well-formed message.
    """
    try:
        # no container or string can be longer than the frame; a map entry needs two bytes
        n = len(body)
        obj = msgpack.unpackb(
            body, raw=False, use_list=True, strict_map_key=False,
            max_str_len=n, max_bin_len=n, max_array_len=n, max_map_len=n // 2, max_ext_len=n,
        )  # fmt: skip
    except Exception as exc:  # msgpack raises several unrelated types
        raise _bad(f"undecodable frame ({type(exc).__name__})") from None
    if not isinstance(obj, list) or not obj or type(obj[0]) is not int:
        raise _bad("frame is not a tagged message")
    entry = _REGISTRY.get(obj[0])
    if entry is None:
        raise _bad(f"unknown message tag {obj[0]}")
    cls, checkers = entry
    values = obj[1:]
    if len(values) != len(checkers):
        raise _bad(f"{cls.__name__} needs {len(checkers)} fields, got {len(values)}")
    try:
        return cls(*[check(v) for check, v in zip(checkers, values)])
    except (TypeError, ValueError) as exc:
        raise _bad(f"{cls.__name__}: {exc}") from None


def _bad(message: str) -> RemoteWireError:
    return RemoteWireError(ErrorCode.BAD_MESSAGE, message)
