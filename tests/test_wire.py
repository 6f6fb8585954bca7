"""dispy_wire without sockets: bytes in, messages out.

Frames at every split point, every message through encode/decode, ill-typed
fields, garbage (hypothesis), and the handshake run back to back through real
frames, as h11's and wsproto's tests do.
"""

from __future__ import annotations

import base64
import pickle
import tracemalloc
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispy_wire import messages as M
from dispy_wire.errors import ErrorCode, LocalWireError, NotLeaderError, RemoteWireError
from dispy_wire.framing import HEADER, LARGE, NEED_DATA, PREAMBLE, FrameDecoder, encode_frame
from dispy_wire.handshake import ChannelBinding, HandshakeState, Peer, PeerHandshake, Role, ServerHandshake
from dispy_wire.messages import (
    PROTOCOL_VERSION,
    JobRef,
    JobResult,
    JobSpec,
    JobStart,
    Message,
    RunJob,
    decode,
    encode,
)
from dispy_wire.payload import Computation, dumps, loads, pack_computation, unpack_computation
from dispy_wire.status import JobStatus
from dispy_wire.verifier import Verifier
from dispy_wire.schedulers import Schedulers, deadline

# --------------------------------------------------------------------------
# One plausible instance of every message


RESULT = JobResult("c-1", 7, int(JobStatus.FINISHED), b"\x80\x05res", b"out\n", b"", "", "", 10.0, 12.5)
FAILED = JobResult("c-1", 8, int(JobStatus.TERMINATED), None, b"", b"err", "Traceback ...", "ZeroDivisionError", 1.0, 2.0)

SAMPLES: list[Message] = [
    M.Challenge(PROTOCOL_VERSION, "sched-1", "SCRAM-SHA-256"),
    M.Hello(PROTOCOL_VERSION, "client", "alice", "n,,n=client:alice,r=abc", {"host": "h1", "pid": 4242}, "SCRAM-SHA-256"),
    M.ServerFirst("r=abcdef,s=c2FsdA==,i=4096"),
    M.ClientProof("c=biws,r=abcdef,p=cHJvb2Y="),
    M.Welcome("session-1", {"heartbeat": 5.0, "server": "sched-1"}, "v=c2lnbmF0dXJl"),
    M.Refused("login-failed", "login failed for user 'alice': unknown name or wrong secret"),
    M.Error("unknown-cluster", "no open cluster c-9", "c-9"),
    M.NotLeader("sched-b.lan:9702"),
    M.OpenCluster("c-1", "compute", b"\x82computation", True, {"nodes": ["n1", "10.0.0.*"], "pulse": 2.5}),
    M.SubmitJobs("c-1", [JobSpec(1, 0, b"args-1", {}), JobSpec(2, -3, b"", {"timeout": 2.5})]),
    M.CancelJobs("c-1", [1, 2, 3]),
    M.AckResults("c-1", [7]),
    M.CloseCluster("c-1", False),
    M.GetStatus("ref-1"),
    M.ClusterOpened("c-1", True),
    M.JobsAccepted("c-1", [1, 2]),
    M.JobsStarted("c-1", [JobStart(1, "node-1", "10.0.0.1", 3.5)]),
    M.JobResults("c-1", [RESULT, FAILED]),
    M.Status("ref-1", {"users": {"alice": {"busy": 3}}, "cpus": 16}),
    M.ClusterClosed("c-1"),
    M.SetNodeCpus("c-1", "alpha", 2),
    M.ResetupNode("c-1", "alpha", b"\x82new computation"),
    M.PutFile("c-1", "r1", "alpha", "data.csv", b"1,2\n", 0o644),
    M.FilePutDone("r1", False, "cluster is not loaded on node alpha"),
    M.NodeUpdates("c-1", [M.NodeInfo("joined", "alpha", "10.0.0.1", 8, 2, {"memory": 2**33})]),
    M.NodeUnusable("c-1", "alpha", "10.0.0.1", "the node runs Python 3.9, the client Python 3.11"),
    M.JobFiles([M.JobFile("c-1", 1, "out.csv", b"a,b\n", 0o600)]),
    M.NodeFiles([M.JobFile("c-1", 1, "out.csv", b"a,b\n", 0o600), M.JobFile("c-1", 2, "e", b"", 0o644)]),
    M.Heartbeat({"cpus": 8, "cpu_percent": 12.5, "memory": 2**33}),
    M.NodeResults([RESULT]),
    M.NodeStarts([M.JobRef("c-1", 1), M.JobRef("c-1", 2)]),
    M.NodeReturned([M.JobRef("c-1", 3)]),
    M.RecallJobs([M.JobRef("c-1", 3), M.JobRef("c-2", 4)]),
    M.ClusterFailed("c-1", "ImportError: no module named numpy"),
    M.LoadCluster("c-1", "alice", b"\x82computation", {"dest_path": "x"}),
    M.RunJobs([RunJob("c-1", 1, b"args-1", {}), RunJob("c-2", 5, b"args-5", {"timeout": 1})]),
    M.KillJobs([JobRef("c-1", 1)]),
    M.UnloadCluster("c-1"),
    M.ResultsRecorded([JobRef("c-1", 1), JobRef("c-1", 2)]),
    M.NodeHolds([JobRef("c-1", 3)], ["c-1", "c-2"]),
    M.Ping(),
    M.Restarting("scheduler s1 stopping (SIGTERM); jobs keep running", 0.0),
    M.JobsKnown("c0ffee", [1, 2, 3]),
]


def stream_of(msgs: list[Message]) -> bytes:
    return PREAMBLE + b"".join(encode(m) for m in msgs)


def drain(decoder: FrameDecoder) -> list[Message]:
    return [decode(body) for body in decoder.frames()]


def raw(*fields: Any) -> bytes:
    """A frame body built by hand, bypassing the typed dataclasses."""
    return msgpack.packb(list(fields), use_bin_type=True)


def test_samples_cover_every_registered_message() -> None:
    # a new message without a sample here would escape the round-trip tests
    registered = {cls for cls, _ in M._REGISTRY.values()}
    assert {type(m) for m in SAMPLES} == registered


# --------------------------------------------------------------------------
# Frames


def test_frame_round_trips_through_the_decoder() -> None:
    decoder = FrameDecoder()
    decoder.feed(PREAMBLE + encode_frame(b"hello") + encode_frame(b"") + encode_frame(b"x" * 70_000))
    assert decoder.frames() == [b"hello", b"", b"x" * 70_000]
    assert decoder.next_frame() is NEED_DATA
    assert decoder.buffered == 0


def test_decoder_without_preamble_reads_frames_directly() -> None:
    decoder = FrameDecoder(expect_preamble=False)
    decoder.feed(encode_frame(b"abc"))
    assert decoder.frames() == [b"abc"]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(msg: Message) -> None:
    frame = encode(msg)
    decoder = FrameDecoder(expect_preamble=False)
    decoder.feed(frame)
    (body,) = decoder.frames()
    back = decode(body)
    assert type(back) is type(msg)
    assert back == msg


def test_records_come_back_as_their_named_tuple_types() -> None:
    back = decode(encode(M.SubmitJobs("c", [JobSpec(1, 2, b"p", {})]))[HEADER.size :])
    assert isinstance(back, M.SubmitJobs)
    assert type(back.jobs[0]) is JobSpec
    results = decode(encode(M.JobResults("c", [RESULT]))[HEADER.size :])
    assert isinstance(results, M.JobResults)
    assert type(results.results[0]) is JobResult and results.results[0].result == RESULT.result


def test_int_on_the_wire_is_accepted_for_a_float_field() -> None:
    back = decode(raw(22, "c", [[1, "n", "1.2.3.4", 3]]))
    assert isinstance(back, M.JobsStarted)
    assert back.starts[0].time == 3.0 and isinstance(back.starts[0].time, float)


def test_stream_split_at_every_byte_offset_gives_the_same_messages() -> None:
    stream = stream_of(SAMPLES)
    for cut in range(len(stream) + 1):
        decoder = FrameDecoder()
        decoder.feed(stream[:cut])
        got = drain(decoder)
        decoder.feed(stream[cut:])
        got += drain(decoder)
        assert got == SAMPLES, f"split at {cut}"
        assert decoder.buffered == 0


def test_stream_fed_one_byte_at_a_time_gives_the_same_messages() -> None:
    stream = stream_of(SAMPLES)
    decoder = FrameDecoder()
    got: list[Message] = []
    for i in range(len(stream)):
        decoder.feed(stream[i : i + 1])
        got += drain(decoder)
    assert got == SAMPLES


@given(cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_stream_split_into_arbitrary_chunks_gives_the_same_messages(cuts: list[int]) -> None:
    stream = stream_of(SAMPLES)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    decoder = FrameDecoder()
    got: list[Message] = []
    for a, b in zip(points, points[1:]):
        decoder.feed(stream[a:b])
        got += drain(decoder)
    assert got == SAMPLES


#: bodies around and at `LARGE`, the size from which a frame not yet whole is gathered piece by piece
BODIES = [b"a" * 10, bytes(range(256)) * (LARGE // 256), b"b" * 3, b"c" * (LARGE - 1), b"d" * (3 * LARGE + 7), b"", b"e"]


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(cuts=st.lists(st.tuples(st.integers(min_value=0, max_value=10 * LARGE), st.booleans()), max_size=40))
def test_large_frames_split_anywhere_come_back_whole_and_in_order(cuts: list[tuple[int, bool]]) -> None:
    stream = PREAMBLE + b"".join(encode_frame(b) for b in BODIES)
    drain_at = {c % (len(stream) + 1) for c, drain in cuts if drain}  # elsewhere, more is fed before any is taken
    points = sorted({c % (len(stream) + 1) for c, _ in cuts} | {0, len(stream)})
    decoder = FrameDecoder()
    got: list[bytes] = []
    for a, b in zip(points, points[1:]):
        decoder.feed(stream[a:b])
        if b in drain_at:
            got += decoder.frames()
    got += decoder.frames()
    assert got == BODIES
    assert decoder.buffered == 0


def test_a_large_frame_sent_a_byte_at_a_time_is_held_in_about_its_own_size() -> None:
    body = bytes(range(256)) * 1024  # 256 KiB
    frame = encode_frame(body)
    decoder = FrameDecoder(expect_preamble=False)
    tracemalloc.start()
    try:
        for i in range(len(frame) - 1):
            decoder.feed(frame[i : i + 1])
            if i == HEADER.size:
                assert decoder.next_frame() is NEED_DATA  # its header read: it is gathered from here
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 2 * len(body), f"{held} bytes held for a frame of {len(body)}"
    decoder.feed(frame[-1:])
    assert decoder.next_frame() == body


def test_a_buffer_fed_and_then_changed_by_its_owner_does_not_change_the_frame() -> None:
    decoder = FrameDecoder(expect_preamble=False)
    body = b"z" * (2 * LARGE)
    frame = encode_frame(body)
    decoder.feed(frame[: LARGE // 2])
    assert decoder.next_frame() is NEED_DATA
    reused = bytearray(frame[LARGE // 2 : LARGE])
    decoder.feed(reused)  # type: ignore[arg-type]  (a caller's own buffer, as recv_into fills one)
    reused[:] = b"!" * len(reused)
    decoder.feed(frame[LARGE:])
    assert decoder.next_frame() == body


def test_a_large_frame_announced_beyond_max_size_is_refused_before_it_is_gathered() -> None:
    decoder = FrameDecoder(max_size=2 * LARGE, expect_preamble=False)
    decoder.feed(encode_frame(b"x" * (2 * LARGE))[: LARGE])
    assert decoder.next_frame() is NEED_DATA  # at the limit: gathered
    decoder.feed(b"x" * (LARGE + HEADER.size))
    assert decoder.next_frame() == b"x" * (2 * LARGE)
    decoder.feed(HEADER.pack(2 * LARGE + 1) + b"x" * 10)
    with pytest.raises(RemoteWireError) as exc:
        decoder.next_frame()
    assert exc.value.code == ErrorCode.TOO_LARGE


def test_long_lived_decoder_does_not_keep_consumed_bytes() -> None:
    body = b"y" * 1000
    stream = PREAMBLE + encode_frame(body) * 1000  # 1 MB through one decoder
    decoder = FrameDecoder()
    got = 0
    for i in range(0, len(stream), 1500):  # a frame and a half at a time: never empty
        decoder.feed(stream[i : i + 1500])
        frames = decoder.frames()
        assert all(f == body for f in frames)
        got += len(frames)
        assert len(decoder._buf) < 200_000, "consumed bytes are kept"
    assert got == 1000


@pytest.mark.parametrize(
    "first_bytes",
    [b"G", b"GET / HTTP/1.1\r\n", b"\x16\x03\x01", b"DX", b"DSX", b"DSH\x02", b"\x00\x00\x00\x05hello"],
    ids=repr,
)
def test_wrong_preamble_is_not_dispy(first_bytes: bytes) -> None:
    decoder = FrameDecoder()
    decoder.feed(first_bytes)
    with pytest.raises(RemoteWireError) as info:
        decoder.next_frame()
    assert info.value.code is ErrorCode.NOT_DISPY


def test_single_wrong_byte_is_refused_without_waiting_for_more() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"X")
    with pytest.raises(RemoteWireError) as info:
        decoder.next_frame()
    assert info.value.code is ErrorCode.NOT_DISPY
    assert "X" in info.value.message


def test_partial_correct_preamble_needs_data() -> None:
    decoder = FrameDecoder()
    for i in range(len(PREAMBLE)):
        decoder.feed(PREAMBLE[i : i + 1])
        assert decoder.next_frame() is NEED_DATA
    decoder.feed(encode_frame(b"ok"))
    assert decoder.frames() == [b"ok"]


def test_header_announcing_more_than_max_size_is_refused_before_the_body() -> None:
    decoder = FrameDecoder(max_size=100)
    decoder.feed(PREAMBLE + HEADER.pack(101))  # header only; no body has arrived
    with pytest.raises(RemoteWireError) as info:
        decoder.next_frame()
    assert info.value.code is ErrorCode.TOO_LARGE
    assert "101" in info.value.message


def test_huge_announced_frame_is_refused_from_its_header() -> None:
    decoder = FrameDecoder()
    decoder.feed(PREAMBLE + HEADER.pack(2**32 - 1) + b"abc")
    with pytest.raises(RemoteWireError) as info:
        decoder.next_frame()
    assert info.value.code is ErrorCode.TOO_LARGE


def test_frame_of_exactly_max_size_is_accepted() -> None:
    decoder = FrameDecoder(max_size=100)
    decoder.feed(PREAMBLE + HEADER.pack(100))
    assert decoder.next_frame() is NEED_DATA
    decoder.feed(b"z" * 100)
    assert decoder.frames() == [b"z" * 100]


# --------------------------------------------------------------------------
# Ill-typed messages


ILL_TYPED: list[tuple[str, bytes]] = [
    ("int for a str field", raw(10, 5, "n", b"c", True, {})),
    ("str for a bytes field", raw(11, "c-1", [[1, 0, "args", {}]])),
    ("bytes for a str field", raw(25, b"c-1")),
    ("None for a required field", raw(25, None)),
    ("float for an int field", raw(1, 1.0, b"n", "s")),
    ("list for a dict field", raw(30, [1, 2])),
    ("too few fields", raw(14, "c-1")),
    ("too many fields", raw(14, "c-1", True, "extra")),
    ("no fields at all", raw(12)),
    ("unknown tag", raw(99, "x")),
    ("tag zero", raw(0)),
    ("negative tag", raw(-1, "x")),
    ("str tag", raw("1", 1, b"n", "s")),
    ("float tag", raw(1.0, 1, b"n", "s")),
    ("empty list", raw()),
    ("a map, not a list", msgpack.packb({"tag": 1})),
    ("an int, not a list", msgpack.packb(14)),
    ("a str, not a list", msgpack.packb("hello")),
    ("nil", msgpack.packb(None)),
    ("bool where int expected", raw(1, True, b"n", "s")),
    ("bool in a list of ints", raw(21, "c-1", [1, True])),
    ("int where bool expected", raw(14, "c-1", 1)),
    ("scalar for a list field", raw(12, "c-1", 5)),
    ("list of str for list of int", raw(12, "c-1", ["1"])),
    ("nested record too short", raw(11, "c-1", [[1, 0]])),
    ("nested record too long", raw(11, "c-1", [[1, 0, b"p", {}, 9]])),
    ("nested record not a list", raw(11, "c-1", [5])),
    ("nested record as a map", raw(11, "c-1", [{"job_id": 1}])),
    ("nested record field ill-typed", raw(11, "c-1", [[1, "high", b"p"]])),
    ("result record with str result", raw(31, [["c", 1, 11, "res", b"", b"", "", "", 0.0, 1.0]])),
    ("bool for a result record's int", raw(31, [["c", True, 11, None, b"", b"", "", "", 0.0, 1.0, b"", 0.0, 0]])),
    ("result record one field short", raw(31, [["c", 1, 11, None, b"", b"", "", "", 0.0, 1.0, b"", 0.0]])),
    ("str for a start's float", raw(22, "c", [[1, "n", "1.2.3.4", "3"]])),
    ("undecodable byte", b"\xc1"),
    ("truncated msgpack", b"\x93\x01"),
    ("trailing bytes after the message", raw(25, "c-1") + b"\x00"),
    ("invalid utf-8 in a str", b"\x92\x19\xa2\xff\xfe"),
    ("ext type for a str", raw(25, msgpack.ExtType(5, b"x"))),
    ("empty body", b""),
    ("job id beyond SQLite's ints", raw(11, "c-1", [[1 << 63, 0, b"args", {}]])),
    ("priority beyond SQLite's ints", raw(11, "c-1", [[1, (1 << 64) - 1, b"args", {}]])),
    ("deeply nested", b"\x91" * 5000 + b"\x00"),
]


@pytest.mark.parametrize("body", [b for _, b in ILL_TYPED], ids=[n for n, _ in ILL_TYPED])
def test_ill_typed_message_is_bad_message(body: bytes) -> None:
    with pytest.raises(RemoteWireError) as info:
        decode(body)
    assert info.value.code is ErrorCode.BAD_MESSAGE
    assert info.value.message


def test_bad_message_error_names_the_message_class() -> None:
    with pytest.raises(RemoteWireError) as info:
        decode(raw(11, "c-1", [[1, 0]]))
    assert "SubmitJobs" in info.value.message


@pytest.mark.parametrize("options", [{}, {"timeout": 2.5}, {1: 2}, [1, 2], None], ids=["none", "map", "int key", "list", "nil"])
def test_job_options_pass_the_wire_as_sent_for_the_scheduler_to_check(options: Any) -> None:
    # the scheduler refuses bad ones job by job (JobOptions.from_wire, BAD_REQUEST), not the client's whole message
    decoded = decode(raw(11, "c-1", [[7, 0, b"args", options]]))
    assert decoded == M.SubmitJobs("c-1", [JobSpec(7, 0, b"args", options)])
    assert type(decoded.jobs[0]) is JobSpec  # type: ignore[attr-defined]
    with pytest.raises(RemoteWireError):  # the typed fields are still checked
        decode(raw(11, "c-1", [[7, "0", b"args", options]]))


def test_optional_field_accepts_none_and_its_type() -> None:
    assert decode(raw(31, [["c", 1, 11, None, b"", b"", "", "", 0, 1, b"", 0.5, 4096]])) == M.NodeResults(
        [JobResult("c", 1, 11, None, b"", b"", "", "", 0.0, 1.0, b"", 0.5, 4096)]
    )
    assert decode(raw(31, [["c", 1, 11, b"r", b"", b"", "", "", 0, 1, b"m", 0, 0]])) == M.NodeResults(
        [JobResult("c", 1, 11, b"r", b"", b"", "", "", 0.0, 1.0, b"m")]
    )


def test_bool_type_tag_is_bad_message() -> None:
    with pytest.raises(RemoteWireError) as info:
        decode(raw(True, PROTOCOL_VERSION, b"nonce", "sched"))
    assert info.value.code is ErrorCode.BAD_MESSAGE


@pytest.mark.parametrize("avail", [{b"cpus": 8}, {1: 2}], ids=["bytes key", "int key"])
def test_dict_field_with_non_str_keys_is_bad_message(avail: dict[Any, Any]) -> None:
    with pytest.raises(RemoteWireError) as info:
        decode(raw(30, avail))
    assert info.value.code is ErrorCode.BAD_MESSAGE


def test_encoding_an_unencodable_field_is_a_local_error() -> None:
    with pytest.raises(LocalWireError):
        encode(M.Status("r", {"x": object()}))


# --------------------------------------------------------------------------
# Garbage in: only RemoteWireError out, and it ends


def feed_garbage(data: bytes, cuts: list[int], *, preamble: bool, max_size: int) -> int:
    """Feeds `data` in chunks; returns the messages decoded. Raises only RemoteWireError."""
    decoder = FrameDecoder(max_size=max_size, expect_preamble=preamble)
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    count = 0
    for a, b in zip(points, points[1:]):
        decoder.feed(data[a:b])
        for body in decoder.frames():  # bounded: every frame consumes >= 4 bytes
            assert isinstance(decode(body), Message)
            count += 1
    return count


def only_remote_errors(fn: Callable[[], object]) -> None:
    try:
        fn()
    except RemoteWireError as exc:
        assert exc.code in (ErrorCode.NOT_DISPY, ErrorCode.TOO_LARGE, ErrorCode.BAD_MESSAGE)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.binary(max_size=600),
    cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=8),
    preamble=st.booleans(),
    max_size=st.sampled_from([0, 16, 1000, 64 * 1024 * 1024]),
)
def test_arbitrary_bytes_raise_only_remote_wire_error(data: bytes, cuts: list[int], preamble: bool, max_size: int) -> None:
    only_remote_errors(lambda: feed_garbage(data, cuts, preamble=preamble, max_size=max_size))


@settings(max_examples=400)
@given(bodies=st.lists(st.binary(max_size=80), max_size=6), cuts=st.lists(st.integers(0, 1000), max_size=6))
def test_well_framed_garbage_raises_only_remote_wire_error(bodies: list[bytes], cuts: list[int]) -> None:
    # past the preamble and the framing, so decode() itself meets the garbage
    data = PREAMBLE + b"".join(encode_frame(b) for b in bodies)
    only_remote_errors(lambda: feed_garbage(data, cuts, preamble=True, max_size=1000))


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8) | st.binary(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300)
@given(tag=st.sampled_from(sorted(M._REGISTRY) + [0, 99]), fields=st.lists(msgpack_values, max_size=11))
def test_tagged_arrays_of_random_values_decode_or_are_bad_messages(tag: int, fields: list[Any]) -> None:
    body = raw(tag, *fields)
    try:
        msg = decode(body)
    except RemoteWireError as exc:
        assert exc.code is ErrorCode.BAD_MESSAGE
    else:
        assert type(msg) is M._REGISTRY[tag][0]
        assert decode(encode(msg)[HEADER.size :]) == msg  # what decodes also re-encodes


@settings(max_examples=300)
@given(index=st.integers(0, len(SAMPLES) - 1), pos=st.integers(0, 10_000), byte=st.integers(0, 255), cut=st.integers(0, 10_000))
def test_mutated_valid_frames_raise_only_remote_wire_error(index: int, pos: int, byte: int, cut: int) -> None:
    frame = bytearray(encode(SAMPLES[index]))
    frame[pos % len(frame)] = byte
    data = PREAMBLE + bytes(frame)[: max(HEADER.size, cut % (len(frame) + 1))]
    only_remote_errors(lambda: feed_garbage(data, [], preamble=True, max_size=10_000))


# --------------------------------------------------------------------------
# Handshake (SCRAM-SHA-256), back to back through real frames

ITER = 4096  # SCRAM's floor: these tests log in hundreds of times
VERIFIERS = {
    (Role.CLIENT, "alice"): Verifier.from_secret("alice-secret", ITER),
    (Role.NODE, "node-1"): Verifier.from_secret("node-secret", ITER),
}
FAKE_KEY = b"k" * 32
BINDING_A = ("tls-server-end-point", b"A" * 32)  # what each end would hash from the certificate it sees
BINDING_B = ("tls-server-end-point", b"B" * 32)


def verifier_for(role: Role, name: str) -> Verifier | None:
    assert isinstance(role, Role)
    return VERIFIERS.get((role, name))


class Wire:
    """One direction of a connection: frames written on one side, decoded on the other."""

    def __init__(self) -> None:
        self.decoder = FrameDecoder()
        self.decoder.feed(PREAMBLE)
        self.sent = bytearray(PREAMBLE)

    def carry(self, msg: Message) -> Message:
        data = encode(msg)
        self.sent += data
        self.decoder.feed(data)
        (got,) = drain(self.decoder)
        return got


def server(
    binding: ChannelBinding | None = None,
    verifiers: Callable[[Role, str], Verifier | None] = verifier_for,
    nonce: str | None = None,
) -> ServerHandshake:
    return ServerHandshake(verifiers, FAKE_KEY, "sched-1", binding, nonce=nonce, fake_iterations=ITER)


class HandshakePair:
    """Links a ServerHandshake and a PeerHandshake (h11's ConnectionPair idea)."""

    def __init__(self, server: ServerHandshake, peer: PeerHandshake) -> None:
        self.server, self.peer = server, peer
        self.to_peer, self.to_server = Wire(), Wire()

    def _to_server(self, msg: Message) -> Message:
        """Carries a peer message to the server; a refusal reaches the peer as a Refused frame."""
        try:
            return self.server.receive(self.to_server.carry(msg))  # type: ignore[return-value]
        except RemoteWireError as exc:
            self.peer.receive(self.to_peer.carry(self.server.refuse(exc)))
            raise AssertionError("the peer did not raise on Refused") from exc

    def run(self) -> tuple[Peer, M.Welcome]:
        hello = self.peer.receive(self.to_peer.carry(self.server.challenge()))
        first = self._to_server(hello)
        proof = self.peer.receive(self.to_peer.carry(first))
        who = self._to_server(proof)
        assert isinstance(who, Peer)
        welcome = self.peer.receive(self.to_peer.carry(self.server.welcome("session-9", {"heartbeat": 5.0})))
        assert isinstance(welcome, M.Welcome)
        return who, welcome


def pair(
    role: Role = Role.CLIENT,
    name: str = "alice",
    secret: str = "alice-secret",
    server_binding: ChannelBinding | None = None,
    peer_binding: ChannelBinding | None = None,
    nonces: tuple[str | None, str | None] = (None, None),
) -> HandshakePair:
    return HandshakePair(
        server(server_binding, nonce=nonces[0]),
        PeerHandshake(role, name, secret, {"host": "h1", "pid": 1}, peer_binding, nonce=nonces[1]),
    )


def test_client_handshake_yields_the_authenticated_user() -> None:
    hs = pair()
    who, welcome = hs.run()
    assert who == Peer(Role.CLIENT, "alice", {"host": "h1", "pid": 1})
    assert welcome.session == "session-9"
    assert hs.server.state is HandshakeState.DONE and hs.peer.state is HandshakeState.DONE
    assert hs.peer.server == "sched-1"


def test_node_handshake_yields_the_node_with_its_info() -> None:
    hs = pair(Role.NODE, "node-1", "node-secret")
    who, _ = hs.run()
    assert who.role is Role.NODE and who.name == "node-1"


def test_a_login_bound_to_the_same_tls_channel_succeeds_with_scram_plus() -> None:
    hs = pair(server_binding=BINDING_A, peer_binding=BINDING_A)
    assert hs.server.challenge().mechanism == "SCRAM-SHA-256-PLUS"
    who, _ = hs.run()
    assert who.name == "alice"


def test_every_split_of_both_streams_gives_the_same_login() -> None:
    nonces = ("server-nonce", "client-nonce")
    reference = pair(nonces=nonces)
    expected = reference.run()
    streams = (bytes(reference.to_peer.sent), bytes(reference.to_server.sent))
    for stream in streams:
        messages = drain_preamble(stream)
        for cut in range(1, len(stream)):
            decoder = FrameDecoder()
            decoder.feed(stream[:cut])
            got = drain(decoder)
            decoder.feed(stream[cut:])
            assert got + drain(decoder) == messages, cut
    assert pair(nonces=nonces).run() == expected  # the same nonces give the same bytes, so the same login


def drain_preamble(stream: bytes) -> list[Message]:
    decoder = FrameDecoder()
    decoder.feed(stream)
    return drain(decoder)


def refusal(hs: HandshakePair) -> RemoteWireError:
    """Runs a handshake expected to fail; returns what the peer raised."""
    with pytest.raises(RemoteWireError) as info:
        hs.run()
    assert hs.server.state is HandshakeState.FAILED or hs.peer.state is HandshakeState.FAILED
    assert hs.peer.state is HandshakeState.FAILED
    return info.value


def test_wrong_secret_is_refused_as_login_failed() -> None:
    assert refusal(pair(secret="guess")).code is ErrorCode.LOGIN_FAILED


def test_unknown_user_and_wrong_secret_get_the_identical_refusal() -> None:
    wrong = refusal(pair(secret="guess"))
    nobody = HandshakePair(server(verifiers=lambda role, name: None), PeerHandshake(Role.CLIENT, "alice", "guess", {}))
    unknown = refusal(nobody)
    assert (unknown.code, unknown.message) == (wrong.code, wrong.message) == (
        ErrorCode.LOGIN_FAILED, "login failed for user 'alice': unknown name or wrong secret"
    )  # fmt: skip
    assert not nobody.server.known  # only the scheduler's own log may tell them apart


def test_an_unknown_name_gets_the_same_salt_every_time_so_asking_twice_tells_nothing() -> None:
    def salt_and_iterations(name: str) -> str:
        hs = pair(name=name, secret="x")
        first = hs.server.receive(hs.to_server.carry(hs.peer.receive(hs.server.challenge())))
        assert isinstance(first, M.ServerFirst)
        return first.server_first.split(",", 1)[1]  # s=...,i=...

    assert salt_and_iterations("mallory") == salt_and_iterations("mallory")
    assert salt_and_iterations("mallory") != salt_and_iterations("trudy")
    assert salt_and_iterations("alice") == salt_and_iterations("alice")


def test_client_secret_does_not_authenticate_a_node_of_the_same_name() -> None:
    assert refusal(pair(Role.NODE, "alice", "alice-secret")).code is ErrorCode.LOGIN_FAILED


def test_hello_of_another_protocol_version_is_refused() -> None:
    with pytest.raises(RemoteWireError) as info:
        server().receive(M.Hello(PROTOCOL_VERSION + 1, "client", "alice", "n,,n=client:alice,r=abc", {}, "SCRAM-SHA-256"))
    assert info.value.code is ErrorCode.BAD_VERSION


def test_challenge_of_another_protocol_version_is_refused_by_the_peer() -> None:
    peer = PeerHandshake(Role.CLIENT, "alice", "alice-secret", {})
    with pytest.raises(RemoteWireError) as info:
        peer.receive(M.Challenge(PROTOCOL_VERSION + 1, "s", "SCRAM-SHA-256"))
    assert info.value.code is ErrorCode.BAD_VERSION
    assert peer.state is HandshakeState.FAILED


def test_a_recorded_exchange_cannot_be_replayed() -> None:
    first = pair()
    first.run()
    hello, proof = drain_preamble(bytes(first.to_server.sent))
    replay = server()
    replay.challenge()
    assert isinstance(replay.receive(hello), M.ServerFirst)  # a fresh server nonce...
    with pytest.raises(RemoteWireError) as info:
        replay.receive(proof)  # ...which the recorded proof does not cover
    assert info.value.code is ErrorCode.BAD_MESSAGE and "nonce" in info.value.message


def test_hello_with_its_role_changed_fails_the_proof() -> None:
    # the same name and secret under both roles: SCRAM's user name binds the role
    shared = Verifier.from_secret("shared", ITER)
    srv = server(verifiers=lambda role, name: shared)
    peer = PeerHandshake(Role.CLIENT, "alice", "shared", {})
    hello = peer.receive(srv.challenge())
    assert isinstance(hello, M.Hello)
    with pytest.raises(RemoteWireError) as info:
        srv.receive(M.Hello(hello.version, "node", hello.name, hello.client_first, hello.info, hello.mechanism))
    assert info.value.code is ErrorCode.BAD_MESSAGE


def test_a_relay_between_two_tls_channels_fails_the_binding() -> None:
    # the real node's TLS ends at the relay (binding B); the relay's own TLS to the scheduler has binding A
    err = refusal(pair(Role.NODE, "node-1", "node-secret", server_binding=BINDING_A, peer_binding=BINDING_B))
    assert err.code is ErrorCode.CHANNEL_BINDING


@pytest.mark.parametrize(("server_binding", "peer_binding"), [(BINDING_A, None), (None, BINDING_A)], ids=["peer-plain", "server-plain"])
def test_tls_on_one_side_only_is_refused(server_binding: ChannelBinding | None, peer_binding: ChannelBinding | None) -> None:
    hs = pair(server_binding=server_binding, peer_binding=peer_binding)
    with pytest.raises(RemoteWireError) as info:
        hs.peer.receive(hs.server.challenge())
    assert info.value.code is ErrorCode.CHANNEL_BINDING


def test_a_fake_scheduler_that_does_not_know_the_verifier_is_detected() -> None:
    # it has no verifier: it answers with a made-up salt and welcomes whatever proof comes back
    peer = PeerHandshake(Role.CLIENT, "alice", "alice-secret", {}, nonce="client-nonce")
    hello = peer.receive(M.Challenge(PROTOCOL_VERSION, "evil", "SCRAM-SHA-256"))
    assert isinstance(hello, M.Hello)
    salt = base64.b64encode(b"s" * 16).decode()
    peer.receive(M.ServerFirst(f"r=client-noncefake,s={salt},i=4096"))
    with pytest.raises(RemoteWireError) as info:
        peer.receive(M.Welcome("s", {}, "v=" + base64.b64encode(b"x" * 32).decode()))
    assert info.value.code is ErrorCode.SERVER_NOT_VERIFIED
    # and one holding another verifier for the name fails the same way (as does its proof check)
    hs = HandshakePair(server(verifiers=lambda r, n: Verifier.from_secret("other", ITER)), PeerHandshake(Role.CLIENT, "alice", "alice-secret", {}))
    assert refusal(hs).code is ErrorCode.LOGIN_FAILED


def test_a_fake_scheduler_cannot_hold_a_peer_on_a_hash_of_millions_of_iterations() -> None:
    from dispy_wire.verifier import MAX_ITERATIONS

    peer = PeerHandshake(Role.NODE, "n1", "node-secret", {}, nonce="client-nonce")
    peer.receive(M.Challenge(PROTOCOL_VERSION, "evil", "SCRAM-SHA-256"))
    salt = base64.b64encode(b"s" * 16).decode()
    with pytest.raises(RemoteWireError, match=f"asks for {MAX_ITERATIONS + 1} PBKDF2 iterations") as info:
        peer.receive(M.ServerFirst(f"r=client-noncefake,s={salt},i={MAX_ITERATIONS + 1}"))
    assert info.value.code is ErrorCode.BAD_MESSAGE  # refused before any hashing


@pytest.mark.parametrize(
    ("hello", "code"),
    [
        (M.Hello(PROTOCOL_VERSION, "admin", "alice", "n,,n=x,r=a", {}, "SCRAM-SHA-256"), ErrorCode.BAD_MESSAGE),
        (M.Hello(PROTOCOL_VERSION, "client", "", "n,,n=x,r=a", {}, "SCRAM-SHA-256"), ErrorCode.BAD_MESSAGE),
        (M.Hello(PROTOCOL_VERSION, "client", "alice", "garbage", {}, "SCRAM-SHA-256"), ErrorCode.BAD_MESSAGE),
        (M.Hello(PROTOCOL_VERSION, "client", "alice", "n,,n=client:bob,r=a", {}, "SCRAM-SHA-256"), ErrorCode.BAD_MESSAGE),
        (M.Welcome("s", {}, ""), ErrorCode.BAD_MESSAGE),
    ],
    ids=["unknown role", "empty name", "not SCRAM", "another SCRAM user", "not a Hello"],
)
def test_malformed_hello_is_refused_as_bad_message(hello: Message, code: ErrorCode) -> None:
    with pytest.raises(RemoteWireError) as info:
        server().receive(hello)
    assert info.value.code is code


@pytest.mark.parametrize("code", list(ErrorCode), ids=str)
def test_peer_maps_refused_to_remote_wire_error_with_its_code(code: ErrorCode) -> None:
    hs = pair()
    hs.peer.receive(hs.to_peer.carry(hs.server.challenge()))
    with pytest.raises(RemoteWireError) as info:
        hs.peer.receive(hs.to_peer.carry(M.Refused(str(code), "go away")))
    assert info.value.code is code
    assert info.value.message == "go away"


def test_peer_refused_before_the_challenge_raises_with_the_code() -> None:
    peer = PeerHandshake(Role.NODE, "node-1", "node-secret", {})
    with pytest.raises(RemoteWireError) as info:
        peer.receive(M.Refused("shutting-down", "bye"))
    assert info.value.code is ErrorCode.SHUTTING_DOWN


def test_a_standby_answering_in_place_of_the_challenge_names_the_leader() -> None:
    peer = PeerHandshake(Role.CLIENT, "alice", "alice-secret", {})
    with pytest.raises(NotLeaderError) as info:
        peer.receive(M.NotLeader("sched-b.lan:9702"))
    assert info.value.code is ErrorCode.NOT_LEADER and info.value.leader == "sched-b.lan:9702"
    assert "the leader is sched-b.lan:9702" in info.value.message


def test_not_leader_after_the_challenge_is_out_of_order() -> None:
    hs = pair()
    hs.peer.receive(hs.to_peer.carry(hs.server.challenge()))
    with pytest.raises(RemoteWireError) as info:
        hs.peer.receive(hs.to_peer.carry(M.NotLeader("elsewhere:1")))
    assert info.value.code is ErrorCode.BAD_MESSAGE


def test_scheduler_lists_keep_the_leader_first_and_refuse_bad_addresses() -> None:
    schedulers = Schedulers("a:1, [::1]:2,b", 9702)
    assert schedulers.addresses == [("a", 1), ("::1", 2), ("b", 9702)] and str(schedulers) == "a:1,[::1]:2,b:9702"
    assert schedulers.redirect("b:9702") == ("b", 9702) and schedulers.first == ("b", 9702)
    assert schedulers.rotate() == ("a", 1)
    assert schedulers.redirect("") is None and schedulers.redirect("b:port") is None
    schedulers.redirect("c:3")  # named by a standby, not given: one such address at most
    schedulers.redirect("d:4")
    assert schedulers.addresses == [("d", 4), ("a", 1), ("::1", 2), ("b", 9702)]
    with pytest.raises(ValueError):
        Schedulers("a:1,b:x", 9702)
    with pytest.raises(ValueError):
        Schedulers(" , ", 9702)


def test_peer_maps_an_unknown_refusal_code_to_bad_message() -> None:
    peer = PeerHandshake(Role.CLIENT, "alice", "alice-secret", {})
    with pytest.raises(RemoteWireError) as info:
        peer.receive(M.Refused("no-such-code", "?"))
    assert info.value.code is ErrorCode.BAD_MESSAGE


def test_peer_refuses_out_of_order_messages() -> None:
    peer = PeerHandshake(Role.CLIENT, "alice", "alice-secret", {})
    with pytest.raises(RemoteWireError) as info:
        peer.receive(M.Welcome("s", {}, ""))
    assert info.value.code is ErrorCode.BAD_MESSAGE
    peer = PeerHandshake(Role.CLIENT, "alice", "alice-secret", {})
    peer.receive(M.Challenge(PROTOCOL_VERSION, "s", "SCRAM-SHA-256"))
    with pytest.raises(RemoteWireError):
        peer.receive(M.Welcome("s", {}, ""))  # the scheduler skipped its ServerFirst


def test_handshakes_refuse_use_after_they_are_done() -> None:
    hs = pair()
    hs.run()
    with pytest.raises(LocalWireError):
        hs.server.receive(M.Hello(PROTOCOL_VERSION, "client", "alice", "", {}, "SCRAM-SHA-256"))
    with pytest.raises(LocalWireError):
        hs.peer.receive(M.Welcome("s", {}, ""))


def test_no_welcome_before_the_proof_is_checked() -> None:
    with pytest.raises(LocalWireError):
        server().welcome("s", {})


def test_secret_never_crosses_the_wire() -> None:
    hs = pair()
    hs.run()
    assert b"alice-secret" not in bytes(hs.to_server.sent) + bytes(hs.to_peer.sent)


def test_a_verifier_round_trips_through_its_text_and_refuses_bad_ones() -> None:
    v = Verifier.from_secret("pencil", ITER)
    assert Verifier.parse(str(v)) == v and str(v).startswith("SCRAM-SHA-256$4096:")
    assert "pencil" not in str(v)
    for bad in ("pencil", "SCRAM-SHA-256$4096:c2FsdA==", "SCRAM-SHA-256$100:c2FsdA==$" + str(v).split("$")[2]):
        with pytest.raises(ValueError):
            Verifier.parse(bad)


# --------------------------------------------------------------------------
# Payloads


def sample_computation() -> Computation:
    return Computation(
        kind="function",
        name="compute",
        files=[("data.csv", b"a,b\n1,2\n", 0o644), ("run.sh", b"#!/bin/sh\n", 0o755)],
        modules=[("helpers.py", b"def f():\n    return 1\n")],
        objects=b"\x80\x05pickled",
        result_key=bytes(range(32)),
    )


def test_computation_round_trips() -> None:
    comp = sample_computation()
    assert unpack_computation(pack_computation(comp)) == comp


def test_empty_computation_round_trips() -> None:
    comp = Computation("program", "prog", [], [], b"", b"")
    assert unpack_computation(pack_computation(comp)) == comp


def test_user_objects_round_trip_by_value() -> None:
    offset = 40

    def add(x: int) -> int:
        return x + offset

    assert loads(dumps(add))(2) == 42


def test_builtin_arguments_are_pickled_plainly_and_anything_else_by_value() -> None:
    plain = ((1, 2.5, "x", b"y", None, True, [1, {"k": (2,)}]), {"a": 1})
    assert dumps(plain) == pickle.dumps(plain, protocol=5) and loads(dumps(plain)) == plain

    class Local(int):  # a subclass of a built-in type, defined where no unpickler finds it by name
        pass

    ((value,), _) = loads(dumps(((Local(3),), {})))
    assert value == 3 and type(value).__name__ == "Local"  # cloudpickle took it, by value


def packed(**overrides: Any) -> bytes:
    d: dict[str, Any] = {"v": 1, "kind": "function", "name": "f", "files": [], "modules": [], "objects": b"", "result_key": b"k"}
    d.update(overrides)
    return msgpack.packb({k: v for k, v in d.items() if v is not ...}, use_bin_type=True)


@pytest.mark.parametrize(
    "blob",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xc1", id="undecodable"),
        pytest.param(b"\x81", id="truncated"),
        pytest.param(packed(v=2), id="future format"),
        pytest.param(packed(kind=...), id="missing kind"),
        pytest.param(packed(objects=...), id="missing objects"),
        pytest.param(packed(files=[["a"]]), id="file entry too short"),
        pytest.param(packed(files=5), id="files not a list"),
        pytest.param(packed(modules=[["m.py", "source as str"]]), id="module source as str"),
        pytest.param(packed(objects="text"), id="objects as str"),
        pytest.param(msgpack.packb([1, 2]), id="a list, not a map"),
        pytest.param(msgpack.packb(7), id="an int, not a map"),
        pytest.param(packed(objects=3), id="objects as int"),
        pytest.param(packed(files=[["a", 4, 0o644]]), id="file content as int"),
        pytest.param(packed(result_key=...), id="missing result key"),
        pytest.param(packed(result_key="text"), id="result key as str"),
    ],
)
def test_malformed_computation_raises_value_error(blob: bytes) -> None:
    with pytest.raises(ValueError):
        unpack_computation(blob)


def test_batched_writer_joins_a_turns_frames_into_one_write_and_drops_them_once_closed() -> None:
    from dispy_wire.batching import BatchedWriter

    scheduled: list[Callable[[], None]] = []
    writes: list[bytes] = []
    closed = False
    writer = BatchedWriter(scheduled.append, writes.append, lambda: closed)
    for frame in (b"a", b"b", b"c"):
        writer.send(frame)
    assert len(scheduled) == 1 and writes == []  # one flush per turn, not one per frame
    scheduled.pop()()
    assert writes == [b"abc"]
    writer.send(b"d")
    closed = True
    scheduled.pop()()
    assert writes == [b"abc"]


def test_batches_by_size_keep_order_and_stay_within_the_budget_but_for_a_record_alone() -> None:
    from dispy_wire.batching import by_size

    def result(job_id: int, size: int) -> JobResult:
        return JobResult("c", job_id, 11, b"x" * size, b"", b"", "é" * 10, "", 0.0, 0.0)

    records = [result(1, 10), result(2, 600), result(3, 10), result(4, 5000), result(5, 10)]
    # each weighs 256 + its bytes, a string not encoded: é at most 4 (1 and 2: 307 + 897 = 1204)
    batches = list(by_size(records, budget=1210))
    assert [[r.job_id for r in b] for b in batches] == [[1, 2], [3], [4], [5]]
    assert list(by_size([])) == []
    ascii_ = JobResult("c", 1, 11, None, b"", b"", "x" * 943, "", 0.0, 0.0)  # 256 + 1 + 943: an ASCII string weighs its length
    assert [len(b) for b in by_size([ascii_, ascii_], budget=2400)] == [2]
    assert [len(b) for b in by_size([ascii_, ascii_], budget=2399)] == [1, 1]


def test_a_nodes_largest_hello_fits_the_pre_login_frame_limit() -> None:
    from dispy_wire.framing import PRELOGIN_MAX_SIZE

    peer = PeerHandshake(Role.NODE, "n" * 255, "secret", {
        "cpus": 512, "platform": "Linux-6.1.0-x86_64-with-glibc2.36" * 2, "pid": 4194304, "heartbeat": 2.0,
        "version": "10.20.30", "addresses": ["ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"] * M.HELLO_MAX_ADDRESSES,
    })  # fmt: skip
    hello = peer.receive(M.Challenge(PROTOCOL_VERSION, "s", "SCRAM-SHA-256"))
    assert len(encode(hello)) < PRELOGIN_MAX_SIZE // 2


def test_among_several_schedulers_each_gets_a_short_deadline_that_doubles_each_round() -> None:
    assert deadline(10.0, 1, 0) == 10.0  # one scheduler: all the time there is
    assert [deadline(10.0, 2, r) for r in range(5)] == [2.0, 4.0, 8.0, 10.0, 10.0]
    assert deadline(10.0, 3, 10_000) == 10.0


# --------------------------------------------------------------------------
# JobResults from results packed once (the scheduler sends its journal's bytes)


def _result(job_id: int, status: JobStatus, result: bytes | None = None, **fields: Any) -> JobResult:
    return JobResult("c-1", job_id, int(status), result, b"", b"", "", "", 1.5, 2.25)._replace(**fields)


RESULT_SETS = {
    "none": [],
    "finished": [_result(1, JobStatus.FINISHED, dumps({"x": [1, 2.5, "é"]}), cpu_time=0.25, max_rss=5 << 32)],
    "output": [_result(2, JobStatus.FINISHED, dumps(None), stdout=b"out\n" * 1000, stderr="warn é\n".encode())],
    "exception": [
        _result(3, JobStatus.TERMINATED, exception="Traceback (most recent call last):\n  ZeroDivisionError: é",
                exception_type="ZeroDivisionError", mac=b"m" * 32),
        _result(4, JobStatus.CANCELLED, exception="cancelled"),
        _result(5, JobStatus.ABANDONED, exception="node lost"),
    ],  # fmt: skip
    "provisional": [_result(6, JobStatus.PROVISIONAL_RESULT, dumps("halfway"))],
    # msgpack's bin8/16/32 and array16/32 boundaries, and a payload of several megabytes
    "big": [_result(7 + i, JobStatus.FINISHED, b"\x01" * n) for i, n in enumerate((255, 256, 65535, 65536, 6 << 20))],
    "many": [_result(i, JobStatus.FINISHED, dumps(i)) for i in range(70_000)],
}


@pytest.mark.parametrize("cluster_id", ["c-1", "k" * 40])
@pytest.mark.parametrize("name", list(RESULT_SETS))
def test_results_frame_of_packed_results_is_the_one_encode_makes_and_clients_decode(name: str, cluster_id: str) -> None:
    results = RESULT_SETS[name]
    frame = M.encode_results(cluster_id, [M.pack_result(r) for r in results])
    assert frame == encode(M.JobResults(cluster_id, results))
    decoder = FrameDecoder()  # as the client reads its connection
    decoder.feed(PREAMBLE + frame)
    assert M.next_message(decoder) == M.JobResults(cluster_id, results)
    assert M.next_message(decoder) is NEED_DATA


def test_a_packed_result_is_the_journals_format_of_earlier_versions() -> None:
    """Results stored before the scheduler sent the journal's bytes as they are go out unchanged."""
    for results in RESULT_SETS.values():
        for r in results[:10]:
            assert M.pack_result(r) == msgpack.packb(list(r), use_bin_type=True)
