"""Fuzzing of every decoder and validator of untrusted input: garbage gives the module's typed error, nothing else.

Each property feeds one decoder or validator what an attacker (or a broken
peer, or a careless operator) can give it: random bytes, random msgpack
structures of the right outer shape with wrong field types, truncations,
oversize length headers, random TOML values. It must return a value or raise
the module's own typed error, never another exception, and must neither
hang (hypothesis's deadline is off on this busy machine, but the soak runs
would not finish) nor buffer more than it was given.

One body serves two tiers: `test_fuzz` runs every property with the
"fuzz" settings profile (a few dozen cases each, a few seconds in all) in
the normal suite; `test_fuzz_soak` (`make soak`) runs the same properties
with the "fuzz-soak" profile, at least 100,000 cases in all, and prints how
many each ran. `DISPY_FUZZ_SCALE` multiplies the soak counts.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any, NoReturn, get_type_hints
from unittest import mock

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispy_client import options as client_options
from dispy_client import recover
from dispy_client.errors import DispyError
from dispy_node import channel as node_channel
from dispy_node import main as node_main
from dispy_node import zygote_protocol as zp
from dispy_node.zygote import Zygote
from dispy_sched import config as sched_config
from dispy_sched.conn import _client_event, _node_event
from dispy_sched.core import CoreConfig, SchedulerCore
from dispy_sched.core import events as E
from dispy_sched.core.invariants import check_invariants
from dispy_sched.policies import load_policy
from dispy_wire import discovery, handshake, limits, messages, payload, result_mac
from dispy_wire.errors import ErrorCode, LocalWireError, RemoteWireError
from dispy_wire.framing import HEADER, NEED_DATA, PREAMBLE, FrameDecoder, encode_frame
from dispy_wire.verifier import MIN_ITERATIONS, Verifier

# --------------------------------------------------------------------------
# Tiers

settings.register_profile(
    "fuzz", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.register_profile(
    "fuzz-soak", max_examples=5500, deadline=None, suppress_health_check=list(HealthCheck), database=None
)
#: soak cases per property: the cheap ones get more, the slow ones (PBKDF2, the core) fewer; at least 100,000 in all
SOAK_WEIGHT = {"sched_config_file": 0.4, "node_config_file": 0.4, "core_events": 0.4, "handshake_server": 0.6,
               "handshake_peer": 0.6, "cluster_options": 0.6}  # fmt: skip
SOAK_SCALE = float(os.environ.get("DISPY_FUZZ_SCALE", "1"))
#: cases run per property, for the soak's report
RAN: Counter[str] = Counter()

# --------------------------------------------------------------------------
# Strategies

#: any msgpack value (msgpack's integers are 64-bit)
INT64 = st.integers(-(2**63), 2**64 - 1)
SCALARS = st.none() | st.booleans() | INT64 | st.floats() | st.text(max_size=20) | st.binary(max_size=20)
MSGPACK = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | INT64, inner, max_size=4),
    max_leaves=12,
)
#: strings from a small set, so names and ids often collide as they would in real traffic
NAMES = st.sampled_from(["K", "L", "alice", "n1", ""]) | st.text(max_size=12)
SMALL_INTS = st.integers(-3, 12) | INT64


def value_of(tp: Any) -> st.SearchStrategy[Any]:
    """Values of a message field's type (the decoder would accept them)."""
    origin = getattr(tp, "__origin__", None)
    args = getattr(tp, "__args__", ())
    if tp is Any:
        return MSGPACK
    if tp is int:
        return SMALL_INTS
    if tp is float:
        return st.floats() | st.integers(-5, 5)
    if tp is str:
        return NAMES
    if tp is bytes:
        return st.binary(max_size=40)
    if tp is bool:
        return st.booleans()
    if origin is list:
        return st.lists(value_of(args[0]), max_size=4)
    if origin is dict or tp is dict:
        return st.dictionaries(st.sampled_from(["nodes", "timeout", "cpus", "node", "allocate"]) | st.text(max_size=8),
                               MSGPACK, max_size=4)  # fmt: skip
    if type(None) in args:
        return st.none() | value_of(next(a for a in args if a is not type(None)))
    if hasattr(tp, "_fields"):
        hints = get_type_hints(tp)
        return st.tuples(*[value_of(hints[f]) for f in tp._fields]).map(list)
    raise AssertionError(f"no strategy for {tp}")


def fields_of(cls: type) -> list[Any]:
    hints = get_type_hints(cls)
    names = cls._fields if hasattr(cls, "_fields") else messages._FIELDS[cls]
    return [hints[n] for n in names]


def shaped(classes: dict[int, type]) -> st.SearchStrategy[list[Any]]:
    """[tag, fields...]: a known tag, fields each either of its type or anything, sometimes one too few or many."""

    def build(tag: int) -> st.SearchStrategy[list[Any]]:
        fields = st.tuples(*[value_of(tp) | MSGPACK for tp in fields_of(classes[tag])]).map(list)
        resized = fields.flatmap(lambda f: st.sampled_from([f, f[:-1], [*f, None]]))
        return resized.map(lambda f: [tag, *f])

    return st.sampled_from(sorted(classes)).flatmap(build)


def well_typed(cls: type) -> st.SearchStrategy[Any]:
    """An instance of a message class with fields of the right types (and any values)."""
    return st.tuples(*[value_of(tp) for tp in fields_of(cls)]).map(lambda f: cls(*(_record(tp, v) for tp, v in zip(fields_of(cls), f))))


def _record(tp: Any, value: Any) -> Any:
    """Lists that stand for NamedTuple records, made records (as decoding makes them)."""
    if hasattr(tp, "_fields"):
        return tp(*value)
    if getattr(tp, "__origin__", None) is list and hasattr(tp.__args__[0], "_fields"):
        return [tp.__args__[0](*v) for v in value]
    return value


def mutated(frames: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Good bodies cut short, with bytes flipped, or with garbage after them."""

    def mutate(draw: Callable[..., Any], body: bytes) -> bytes:
        how = draw(st.sampled_from(["cut", "flip", "append"]))
        if how == "cut" or not body:
            return body[: draw(st.integers(0, max(0, len(body) - 1)))]
        if how == "flip":
            at = draw(st.integers(0, len(body) - 1))
            return body[:at] + bytes([body[at] ^ draw(st.integers(1, 255))]) + body[at + 1 :]
        return body + draw(st.binary(min_size=1, max_size=16))

    return st.composite(lambda draw: mutate(draw, draw(frames)))()


def packed(values: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return values.map(lambda v: msgpack.packb(v, use_bin_type=True))


#: a wire message as it would be sent, for mutation
GOOD_BODIES = st.sampled_from(sorted(messages._REGISTRY)).flatmap(
    lambda tag: well_typed(messages._REGISTRY[tag][0])
).map(lambda m: messages.encode(m)[HEADER.size :])


def chunks(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    at = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        yield data[at:cut]
        at = cut
    yield data[at:]


def counted(name: str) -> None:
    RAN[name] += 1


# --------------------------------------------------------------------------
# dispy_wire


@given(
    st.binary(max_size=200) | st.builds(lambda b: PREAMBLE + b, st.binary(max_size=200)),
    st.lists(st.integers(0, 400), max_size=6),
    st.integers(0, 64),
    st.booleans(),
)
def framing(data: bytes, cuts: list[int], max_size: int, preamble: bool) -> None:
    """FrameDecoder: random bytes in random pieces give bodies within the limit, NEED_DATA, or NOT_DISPY/TOO_LARGE."""
    counted("framing")
    decoder = FrameDecoder(max_size=max_size, expect_preamble=preamble)
    fed = 0
    try:
        for piece in chunks(data, cuts):
            decoder.feed(piece)
            fed += len(piece)
            for body in decoder.frames():
                assert len(body) <= max_size
            assert decoder.buffered <= fed
    except RemoteWireError as exc:
        assert exc.code in (ErrorCode.NOT_DISPY, ErrorCode.TOO_LARGE)


@given(st.integers(0, 2**32 - 1), st.integers(0, 1 << 20), st.binary(max_size=64))
def framing_oversize(size: int, max_size: int, tail: bytes) -> None:
    """A header announcing more than the limit is refused from the header alone: nothing of it is awaited."""
    counted("framing_oversize")
    decoder = FrameDecoder(max_size=max_size)
    decoder.feed(PREAMBLE + HEADER.pack(size) + tail)
    if size > max_size:
        with pytest.raises(RemoteWireError) as caught:
            decoder.next_frame()
        assert caught.value.code is ErrorCode.TOO_LARGE
    else:
        frame = decoder.next_frame()
        assert frame is NEED_DATA if len(tail) < size else frame == tail[:size]


def _decode_or_bad(body: bytes) -> None:
    try:
        msg = messages.decode(body)
    except RemoteWireError as exc:
        assert exc.code is ErrorCode.BAD_MESSAGE
        return
    # what decodes is well-typed: it encodes again, to the same message (compared encoded: NaN != NaN)
    again = messages.encode(msg)
    assert messages.encode(messages.decode(again[HEADER.size :])) == again


@given(st.binary(max_size=300) | mutated(GOOD_BODIES) | packed(MSGPACK))
def message_bytes(body: bytes) -> None:
    """messages.decode: random and mutated bodies give a message or BAD_MESSAGE."""
    counted("message_bytes")
    _decode_or_bad(body)


@given(shaped({tag: cls for tag, (cls, _) in messages._REGISTRY.items()}))
def message_fields(obj: list[Any]) -> None:
    """messages.decode: a known tag with fields of wrong types or counts gives BAD_MESSAGE (or a well-typed message)."""
    counted("message_fields")
    _decode_or_bad(msgpack.packb(obj, use_bin_type=True))


@given(st.lists(GOOD_BODIES | st.binary(max_size=40), max_size=4), st.lists(st.integers(0, 600), max_size=5))
def message_stream(bodies: list[bytes], cuts: list[int]) -> None:
    """next_message over a stream of frames (some garbage) in random pieces: messages, or BAD_MESSAGE per frame."""
    counted("message_stream")
    decoder = FrameDecoder(max_size=1024)
    stream = PREAMBLE + b"".join(encode_frame(b) for b in bodies)
    got = 0
    for piece in chunks(stream, cuts):
        decoder.feed(piece)
        while True:
            try:
                msg = messages.next_message(decoder)
            except RemoteWireError as exc:
                assert exc.code in (ErrorCode.BAD_MESSAGE, ErrorCode.TOO_LARGE)
                if exc.code is ErrorCode.TOO_LARGE:
                    return
                got += 1
                continue
            if msg is NEED_DATA:
                break
            got += 1
    assert got == len(bodies)  # a bad frame leaves the stream in sync


HELLOS = st.builds(
    messages.Hello, st.integers(0, 3) | INT64, st.sampled_from(["client", "node"]) | NAMES, NAMES,
    st.sampled_from(["n,,n=client:alice,r=abc", "y,,n=node:n1,r=x", "p=tls-server-end-point,,n=client:alice,r=q"])
    | st.text(max_size=60), st.dictionaries(st.text(max_size=8), MSGPACK, max_size=3),
)  # fmt: skip
PROOFS = st.builds(messages.ClientProof, st.sampled_from(["c=biws,r=abc", "c=eSws,r=x,p=AAAA"]) | st.text(max_size=80))
ANY_MESSAGE = st.sampled_from(sorted(messages._REGISTRY)).flatmap(lambda tag: well_typed(messages._REGISTRY[tag][0]))
VERIFIER = Verifier.from_secret("s3cret", MIN_ITERATIONS, b"0123456789abcdef")


@given(HELLOS | ANY_MESSAGE, PROOFS | ANY_MESSAGE, st.booleans(), st.booleans())
def handshake_server(first: messages.Message, second: messages.Message, known: bool, tls: bool) -> None:
    """ServerHandshake.receive: any Hello and proof give a ServerFirst, a peer, or RemoteWireError."""
    counted("handshake_server")
    hs = handshake.ServerHandshake(
        lambda role, name: VERIFIER if known else None, b"k" * 32, "sched",
        ("tls-server-end-point", b"h" * 32) if tls else None, fake_iterations=MIN_ITERATIONS,
    )  # fmt: skip
    try:
        assert isinstance(hs.receive(first), messages.ServerFirst)
        assert isinstance(hs.receive(second), handshake.Peer)
    except RemoteWireError:
        assert hs.state is handshake.HandshakeState.FAILED


@given(st.lists(ANY_MESSAGE | st.builds(messages.ServerFirst, st.text(max_size=80)), min_size=1, max_size=3),
       st.sampled_from(["s=MDEyMzQ1Njc4OWFiY2RlZg==,i=4096", "s=,i=4096", "i=0", "e=other-error", ""]),
       st.booleans())  # fmt: skip
def handshake_peer(replies: list[messages.Message], tail: str, good_nonce: bool) -> None:
    """PeerHandshake.receive: whatever a fake scheduler answers gives the next message or RemoteWireError."""
    counted("handshake_peer")
    hs = handshake.PeerHandshake(handshake.Role.CLIENT, "alice", "s3cret", {}, nonce="clientnonce")
    sequence: list[messages.Message] = [messages.Challenge(messages.PROTOCOL_VERSION, "s", "SCRAM-SHA-256")] if good_nonce else []
    for reply in replies:
        if good_nonce and isinstance(reply, messages.ServerFirst):  # deep enough to reach the PBKDF2 and the proof
            reply = messages.ServerFirst(f"r=clientnonce{reply.server_first[:8].replace(',', '')}x,{tail}")
        sequence.append(reply)
    try:
        for msg in sequence:
            hs.receive(msg)
    except RemoteWireError:
        assert hs.state is handshake.HandshakeState.FAILED
    except LocalWireError:
        assert hs.state in (handshake.HandshakeState.FAILED, handshake.HandshakeState.DONE)  # only after it ended


B64 = st.sampled_from(["", "AAAA", "MDEyMzQ1Njc4OWFiY2RlZg==", "A" * 43 + "=", "!!", "é"]) | st.text(max_size=50)


@given(st.text(max_size=200) | st.builds(
    lambda it, salt, k1, k2, seps: f"SCRAM-SHA-256${it}{seps[0]}{salt}{seps[1]}{k1}{seps[2]}{k2}",
    st.integers(-5, 10**6).map(str) | st.text(max_size=10), B64, B64, B64,
    st.tuples(*[st.sampled_from([":", "$", "", "::"])] * 3).map(lambda s: (s[0], "$" if s[1] == "" else s[1], s[2])),
))  # fmt: skip
def verifier_parse(text: str) -> None:
    """Verifier.parse: any text gives a verifier of sound sizes, or ValueError."""
    counted("verifier_parse")
    try:
        v = Verifier.parse(text)
    except ValueError:
        return
    assert v.iterations >= MIN_ITERATIONS and len(v.stored_key) == len(v.server_key) == 32 and v.salt


DATAGRAM_FIELDS = {1: discovery.Discover, 2: discovery.Announce}


@given(
    st.binary(max_size=1100)
    | st.builds(lambda b: discovery.MAGIC + b, st.binary(max_size=600))
    | shaped(DATAGRAM_FIELDS).map(lambda o: discovery.MAGIC + msgpack.packb([o[0], messages.PROTOCOL_VERSION, *o[1:]]))
    | shaped(DATAGRAM_FIELDS).map(lambda o: discovery.MAGIC + msgpack.packb([o[0], *o])),
    st.sampled_from([discovery.Discover, discovery.Announce]),
)
def discovery_decode(data: bytes, expect: type[Any]) -> None:
    """discovery.decode: any datagram gives an `expect` within its limits, or RemoteWireError."""
    counted("discovery_decode")
    try:
        msg = discovery.decode(data, expect)
    except RemoteWireError as exc:
        assert exc.code in (ErrorCode.TOO_LARGE, ErrorCode.NOT_DISPY, ErrorCode.BAD_VERSION, ErrorCode.BAD_MESSAGE)
        return
    assert isinstance(msg, expect) and len(data) <= discovery.MAX_DATAGRAM


@given(st.builds(
    discovery.Announce, NAMES, NAMES, SMALL_INTS, st.binary(max_size=70),
    st.sampled_from([MIN_ITERATIONS, 0, -1, MIN_ITERATIONS - 1, discovery.MAX_ITERATIONS + 1, 2**63]), st.binary(max_size=40),
), st.binary(max_size=20))  # fmt: skip
def discovery_verify(announce: discovery.Announce, nonce: bytes) -> None:
    """discovery.verify: an Announce with any salt, count and proof is simply not verified; it never raises."""
    counted("discovery_verify")
    assert discovery.verify(announce, "node-secret", nonce) is False


COMPUTATION_KEYS = ["v", "kind", "name", "files", "modules", "objects", "result_key"]


@given(
    st.binary(max_size=200)
    | packed(MSGPACK)
    | packed(st.fixed_dictionaries({k: MSGPACK | st.just(1) for k in COMPUTATION_KEYS}))
    | packed(st.fixed_dictionaries({
        "v": st.just(payload.FORMAT_VERSION), "kind": st.text(max_size=5) | MSGPACK, "name": st.text(max_size=5),
        "files": st.lists(st.lists(SCALARS, max_size=4) | MSGPACK, max_size=3),
        "modules": st.lists(st.lists(SCALARS, max_size=3) | MSGPACK, max_size=3),
        "objects": st.binary(max_size=8) | MSGPACK, "result_key": st.binary(max_size=8) | MSGPACK,
    }))  # fmt: skip
)
def computation(blob: bytes) -> None:
    """payload.unpack_computation (and without_result_key): a computation of sound types, or ValueError."""
    counted("computation")
    try:
        comp = payload.unpack_computation(blob)
        stripped = payload.without_result_key(blob)
    except ValueError:
        return
    assert all(isinstance(f[0], str) and isinstance(f[1], bytes) and type(f[2]) is int for f in comp.files)
    assert payload.unpack_computation(stripped).result_key == b""


@given(well_typed(messages.JobResult), well_typed(messages.JobFile), st.binary(max_size=40), NAMES)
def result_macs(res: messages.JobResult, file: messages.JobFile, key: bytes, cluster_id: str) -> None:
    """result_ok and file_ok: any record, key and MAC give a verdict, never an exception; a forged MAC fails."""
    counted("result_macs")
    assert isinstance(result_mac.result_ok(key, cluster_id, res), bool)
    assert result_mac.file_ok(key, cluster_id, file) is (file.mac == result_mac.sign(
        key, result_mac.Kind.FILE, cluster_id, file.job_id, 0, file.data, file.name, file.mode))  # fmt: skip
    if result_mac.needs_mac(res) and len(res.mac) != result_mac.MAC_SIZE:
        assert not result_mac.result_ok(key, cluster_id, res)


SIZE_TEXT = st.builds(
    lambda n, space, unit: f"{n}{space}{unit}",
    st.sampled_from(["0", "1", "1.5", "9" * 400, "1e3", "-1", ".5", "inf", "nan"]) | st.integers(0, 10**30).map(str),
    st.sampled_from(["", " "]), st.sampled_from(["", "K", "m", "G", "T", "GiB", "kb", "P", "X"]),
)  # fmt: skip


@given(SIZE_TEXT | st.text(max_size=20) | st.integers() | st.floats() | st.booleans() | st.none(),
       st.dictionaries(st.sampled_from(sorted(limits.KEYS)) | st.text(max_size=5), SIZE_TEXT | SCALARS, max_size=4))  # fmt: skip
def limit_sizes(text: Any, asked: dict[str, Any]) -> None:
    """limits.parse_size and limits.check: a positive whole number of bytes, or ValueError."""
    counted("limit_sizes")
    try:
        size = limits.parse_size(text)
        assert type(size) is int and size > 0
    except ValueError:
        pass
    try:
        checked = limits.check(asked)
    except ValueError:
        return
    assert all(0 < v < math.inf for v in checked.values())


# --------------------------------------------------------------------------
# dispy_sched


def toml_value(value: Any) -> str:
    """A TOML literal for `value` (inline tables for maps)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(repr(value), repr(value))
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string is a JSON string, but for a few escapes json does not make
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise AssertionError(value)


TOML_SCALARS = st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=15)
TOML_VALUES = st.recursive(
    TOML_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def toml_text(table: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(k)} = {toml_value(v)}\n" for k, v in table.items())


@contextmanager
def a_file(text: str | bytes, mode: int = 0o600) -> Iterator[str]:
    fd, path = tempfile.mkstemp(prefix="dispy-fuzz-")
    try:
        os.write(fd, text.encode() if isinstance(text, str) else text)
        os.close(fd)
        os.chmod(path, mode)
        yield path
    finally:
        os.unlink(path)


GOOD_VERIFIER = str(VERIFIER)
USER_TABLES = st.dictionaries(
    st.sampled_from([*sched_config.UserTable.__struct_fields__, "secret"]) | st.text(max_size=6),
    st.sampled_from([GOOD_VERIFIER, "unlimited", "512M", "1G"]) | TOML_VALUES,
    max_size=5,
).map(lambda t: {"verifier": GOOD_VERIFIER, **t} if len(t) % 2 else t)


@given(
    st.binary(max_size=200).map(lambda b: b.decode("utf-8", "replace"))
    | st.dictionaries(NAMES.filter(bool), USER_TABLES, max_size=3).map(lambda users: f"[users]\n{toml_text(users)}")
    | st.builds(lambda v: f"users = {toml_value(v)}\n", TOML_VALUES)
)
def users_file(text: str) -> None:
    """config.load_users: any file gives user entries of sound types, or ConfigError."""
    counted("users_file")
    with a_file(text) as path:
        try:
            users = sched_config.load_users(path)
        except sched_config.ConfigError:
            return
    for entry in users.values():
        assert entry.share > 0 and all(v is None or type(v) is int for v in entry.limits.values())


@given(st.sampled_from(sched_config.LIMIT_KEYS) | st.sampled_from(["max_queued_bytes", "priority_max"]), TOML_VALUES | SIZE_TEXT)
def sched_limit_value(name: str, value: Any) -> None:
    """config.limit_value: an integer, None (unlimited) or ConfigError."""
    counted("sched_limit_value")
    try:
        got = sched_config.limit_value(name, value, "fuzz")
    except sched_config.ConfigError:
        return
    assert got is None or type(got) is int


SCHED_KEYS = sorted(f for f in sched_config.SchedConfig.__struct_fields__ if not f.startswith("_") and f != "users")


@contextmanager
def fast_verifiers() -> Iterator[None]:
    """Verifiers made with the fewest iterations SCRAM allows: the property is about parsing, not PBKDF2."""
    slow = Verifier.from_secret.__func__  # type: ignore[attr-defined]
    with mock.patch.object(Verifier, "from_secret", classmethod(lambda cls, s, i=MIN_ITERATIONS, salt=None: slow(cls, s, MIN_ITERATIONS, salt))):
        yield


@given(st.dictionaries(st.sampled_from(SCHED_KEYS), TOML_VALUES, max_size=5) | st.dictionaries(st.text(max_size=6), TOML_VALUES, max_size=2))
def sched_config_file(table: dict[str, Any]) -> None:
    """config_from_args --config FILE: random values of the known keys give a config or ConfigError."""
    counted("sched_config_file")
    table.pop("host", None)  # any address off loopback needs secrets and TLS: refused, and never listened on here
    with a_file(toml_text(table)) as path, fast_verifiers():
        try:
            cfg = sched_config.config_from_args(["--config", path, "--host", "127.0.0.1"])
        except sched_config.ConfigError:
            return
    assert 0 <= cfg.port <= 65535 and cfg.max_message_size >= 1024
    assert isinstance(logging.getLevelName(cfg.loglevel.upper()), int)  # main's logging.basicConfig takes it
    assert not [k for k in SCHED_KEYS if isinstance(getattr(cfg, k), float) and math.isnan(getattr(cfg, k))]


CLIENT_MESSAGES = [messages.OpenCluster, messages.SubmitJobs, messages.CancelJobs, messages.AckResults,
                   messages.CloseCluster, messages.GetStatus, messages.PutFile, messages.ResetupNode,
                   messages.SetNodeCpus]  # fmt: skip
NODE_MESSAGES = [messages.Heartbeat, messages.NodeResults, messages.NodeFiles, messages.ClusterFailed,
                 messages.FilePutDone, messages.NodeHolds]  # fmt: skip
CORE_STEPS = st.lists(
    st.tuples(st.sampled_from(["c1", "c2"]), st.sampled_from(CLIENT_MESSAGES).flatmap(well_typed) | ANY_MESSAGE)
    | st.tuples(st.sampled_from(["n1", "n2"]), st.sampled_from(NODE_MESSAGES).flatmap(well_typed) | ANY_MESSAGE)
    | st.tuples(st.sampled_from(["left", "tick"]), st.sampled_from(["c1", "c2", "n1", "n2"])),
    max_size=12,
)
OPENING = st.tuples(st.sampled_from(["c1", "c2"]), st.builds(
    messages.OpenCluster, st.sampled_from(["K", "L"]), NAMES, st.binary(max_size=8), st.booleans(), value_of(dict)
))  # fmt: skip


@given(st.lists(OPENING, max_size=2), st.integers(-2, 4), CORE_STEPS)
def core_events(opening: list[tuple[str, messages.Message]], cpus: int, steps: list[tuple[str, Any]]) -> None:
    """Any decodable message from a logged-in client or node becomes an event or None (_client_event,
    _node_event), and the core takes any sequence of them without an exception, keeping its invariants."""
    counted("core_events")
    core = SchedulerCore(load_policy("fair"), CoreConfig())
    users = {"c1": "alice", "c2": "bob"}
    now = 0.0
    core.handle(E.NodeJoined("n1", "host-1", "127.0.0.2", cpus, 1.0), E.NodeJoined("n2", "host-2", "127.0.0.3", 2, 1.0), now=now)
    for who, step in [*opening, *steps]:
        now += 0.5
        if who == "left":
            event: E.Event | None = E.ClientLeft(step) if step.startswith("c") else E.NodeLeft(step, "gone")
        elif who == "tick":
            event, now = E.Tick(), now + 30
        elif who.startswith("c"):
            event = _client_event(who, users[who], step)
        else:
            event = _node_event(who, step)
        if event is not None:
            core.handle(event, now=now)
            check_invariants(core)


# --------------------------------------------------------------------------
# dispy_node

ZYGOTE_TAGS = {tag: cls for cls, tag in zp._TAGS.items()}


@given(st.binary(max_size=200) | packed(MSGPACK) | shaped(ZYGOTE_TAGS).map(lambda o: msgpack.packb(o, use_bin_type=True))
       | mutated(st.sampled_from(sorted(ZYGOTE_TAGS)).flatmap(lambda tag: well_typed(ZYGOTE_TAGS[tag])).map(
           lambda m: zp.encode(m)[HEADER.size :])))  # fmt: skip
def zygote_messages(body: bytes) -> None:
    """zygote_protocol.decode: what a zygote (user code's account) writes gives a message of sound types, or ValueError."""
    counted("zygote_messages")
    try:
        msg = zp.decode(body)
    except ValueError:
        return
    assert type(msg) in zp._TAGS
    again = zp.encode(msg)
    assert zp.encode(zp.decode(again[HEADER.size :])) == again


RECORDS = st.dictionaries(
    st.sampled_from(["kind", "result", "name", "data", "mode", "mac"]) | st.text(max_size=5),
    st.sampled_from(["provisional", "file", "../../etc/passwd", ""]) | MSGPACK,
    max_size=6,
)


@given(st.lists(packed(RECORDS | MSGPACK).map(encode_frame) | st.binary(max_size=30), max_size=4),
       st.lists(st.integers(0, 300), max_size=4))  # fmt: skip
def channel_records(frames: list[bytes], cuts: list[int]) -> None:
    """A job's channel (dispy_node/channel.py) and the zygote's reading of its records: garbage ends the
    channel quietly; records become Provisional or File messages of sound types with a base name, or are dropped."""
    counted("channel_records")
    sent: list[Any] = []
    zygote = SimpleNamespace(_send=sent.append)
    read, write = os.pipe()
    os.close(write)
    chan = node_channel.Channel(read, lambda record: Zygote._from_job(zygote, 7, record))  # type: ignore[arg-type]
    try:
        for piece in chunks(b"".join(frames), cuts):
            if not chan._take(piece):
                break
    finally:
        chan.close()
    for msg in sent:
        assert isinstance(msg, (zp.Provisional, zp.File)) and msg.job_id == 7 and isinstance(msg.mac, bytes)
        if isinstance(msg, zp.File):
            assert "/" not in msg.name and type(msg.mode) is int and isinstance(msg.data, bytes)
        zp.decode(zp.encode(msg)[HEADER.size :])  # what it sends the daemon, the daemon decodes


class ConfigRefused(Exception):
    pass


def _refuse(message: str) -> NoReturn:
    raise ConfigRefused(message)


NODE_VALUES = st.sampled_from(["1G", "512M", "18:30", "3000000-3000009", "1-4294967294", "1-4294967296", "127.0.0.1:9702", "system", "DEBUG"]) | TOML_VALUES


@given(st.dictionaries(st.sampled_from([*node_main._KEYS, "run_as"]), NODE_VALUES, max_size=5)
       | st.dictionaries(st.text(max_size=6), NODE_VALUES, max_size=2))
def node_config_file(table: dict[str, Any]) -> None:
    """dispynode's load_config with --config FILE: random values of its keys give a config or a refusal (fail)."""
    counted("node_config_file")
    if isinstance(table.get("secret_file"), str):
        del table["secret_file"]  # no reading of random paths
    with a_file(toml_text(table)) as path:
        args = node_main.build_parser().parse_args(["--config", path, "--name", "fuzz"])
        try:
            config, loglevel, _ = node_main.load_config(args, _refuse)
        except ConfigRefused:
            return
    assert config.cpus >= 1 and config.heartbeat > 0 and config.kill_grace >= 0 and config.scheduler_grace >= 0
    assert 0 <= config.port < 65536 and isinstance(logging.getLevelName(loglevel), int)


# --------------------------------------------------------------------------
# dispy_client

def _json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keys = st.sampled_from(["uid", "t", "id", "done"]) | st.text(max_size=4)
    return st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=4)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8), _json_containers, max_leaves=8
)
HEADER_TABLE = st.fixed_dictionaries(
    {"v": st.just(recover.FORMAT_VERSION) | JSON_VALUES},
    optional={k: st.sampled_from(["K", "127.0.0.1:9702", "00" * 32, "zz"]) | TOML_SCALARS
              for k in ("scheduler", "user", "cluster_id", "name", "created", "result_key")},
)  # fmt: skip


@given(
    st.binary(max_size=300)
    | st.lists(JSON_VALUES.map(json.dumps), max_size=5).map("\n".join).map(str.encode)
    | st.tuples(HEADER_TABLE, st.lists(JSON_VALUES, max_size=4)).map(
        lambda h: "\n".join(json.dumps(x) for x in [h[0], *h[1]]).encode())
    | st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n)
)
def recover_file(data: bytes) -> None:
    """recover.read_records: any file gives a header recover_jobs can use and records by uid, or DispyError."""
    counted("recover_file")
    with a_file(data) as path:
        try:
            header, records = recover.read_records(path)
        except DispyError:
            return
    assert isinstance(header["result_key"], bytes)
    assert all(isinstance(header[k], str) for k in ("scheduler", "user", "cluster_id", "name")), header
    assert all(isinstance(r, dict) for r in records.values())


STAR_HOSTS = st.text(max_size=6).map(lambda t: t + "*")  # a pattern: never looked up in the DNS
NODES = st.none() | STAR_HOSTS | st.lists(
    STAR_HOSTS | st.tuples(STAR_HOSTS | st.integers(0, 300)).map(list)
    | st.tuples(STAR_HOSTS, SCALARS.filter(lambda v: not isinstance(v, (bytes, str)) or v == "")) | SCALARS.filter(lambda v: not isinstance(v, str)),
    max_size=3,
)  # fmt: skip
KWARGS = st.dictionaries(
    st.sampled_from([k for k in client_options._KEYWORDS if k not in ("tls_ca", "certfile", "keyfile", "loglevel")])
    | st.text(max_size=5),
    SCALARS | st.dictionaries(st.sampled_from(sorted(limits.KEYS)), SIZE_TEXT | SCALARS, max_size=2),
    max_size=4,
)  # fmt: skip


@given(KWARGS, NODES)
def cluster_options(kwargs: dict[str, Any], nodes: Any) -> None:
    """cluster_options: any keyword values give options, or TypeError (a keyword dispy lacks, a wrong kind of
    value) or ValueError (a bad value), as the constructor's caller expects."""
    counted("cluster_options")
    if "tls_fingerprint" in kwargs and not isinstance(kwargs["tls_fingerprint"], str):
        kwargs["tls_fingerprint"] = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            opts = client_options.cluster_options("SharedJobCluster", kwargs, nodes=nodes)
        except (TypeError, ValueError):
            return
    assert isinstance(opts.timeout, float)


# --------------------------------------------------------------------------
# The two tiers

PROPERTIES: dict[str, Callable[[], None]] = {
    f.__name__: f  # type: ignore[attr-defined]
    for f in (framing, framing_oversize, message_bytes, message_fields, message_stream, handshake_server, handshake_peer,
              verifier_parse, discovery_decode, discovery_verify, computation, result_macs, limit_sizes, users_file,
              sched_limit_value, sched_config_file, core_events, zygote_messages, channel_records, node_config_file,
              recover_file, cluster_options)
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PROPERTIES))
def test_fuzz(name: str) -> None:
    settings(settings.get_profile("fuzz"))(PROPERTIES[name])()


@pytest.mark.soak
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("name", sorted(PROPERTIES))
def test_fuzz_soak(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    profile = settings.get_profile("fuzz-soak")
    examples = int(profile.max_examples * SOAK_WEIGHT.get(name, 1.0) * SOAK_SCALE)
    before = RAN[name]
    settings(profile, max_examples=examples)(PROPERTIES[name])()
    with capsys.disabled():
        print(f"\nfuzz {name}: {RAN[name] - before} cases (max_examples {examples})")


@pytest.mark.soak
def test_fuzz_soak_totals(capsys: pytest.CaptureFixture[str]) -> None:
    """Runs after the soak properties (file order): they ran at least 100,000 cases in all."""
    if not all(RAN[name] for name in PROPERTIES):
        pytest.skip("only some soak properties were selected: no total to check")
    total = sum(RAN.values())
    with capsys.disabled():
        print(f"\nfuzz soak: {total} cases over {len(PROPERTIES)} properties")
    assert total >= 100_000 * min(SOAK_SCALE, 1.0)
