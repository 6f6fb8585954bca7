"""The pre-login gate, the login throttle and log escaping, without sockets or clocks."""

from __future__ import annotations

from dispy_sched.gate import LoginThrottle, PreLoginGate
from dispy_sched.logsafe import peer_text


def test_the_gate_refuses_past_the_per_address_cap_and_counts_again_after_release() -> None:
    gate: PreLoginGate[int] = PreLoginGate(total=100, per_address=2)
    assert gate.admit(1, "10.0.0.1") == (True, None)
    assert gate.admit(2, "10.0.0.1") == (True, None)
    assert gate.admit(3, "10.0.0.1") == (False, None)
    assert gate.admit(4, "10.0.0.2") == (True, None)  # another address is not held back
    gate.release(1)
    assert gate.admit(5, "10.0.0.1") == (True, None)
    gate.release(1)  # twice (login, then close) is harmless
    assert len(gate) == 3


def test_past_the_total_cap_the_longest_waiting_connection_makes_room() -> None:
    gate: PreLoginGate[int] = PreLoginGate(total=3, per_address=3)
    for key, address in ((1, "a"), (2, "b"), (3, "c")):
        gate.admit(key, address)
    assert gate.admit(4, "d") == (True, 1)
    assert gate.admit(5, "e") == (True, 2)
    assert len(gate) == 3


def test_failed_logins_are_throttled_per_address_then_forgiven_over_time() -> None:
    throttle = LoginThrottle(burst=3, name_burst=100, refill=2.0)
    for i in range(3):
        assert throttle.retry_after("10.0.0.1", f"client:u{i}", now=0.0) == 0
        throttle.failed("10.0.0.1", f"client:u{i}", now=0.0)
    assert throttle.retry_after("10.0.0.1", "client:other", now=0.0) == 2.0
    assert throttle.retry_after("10.0.0.2", "client:other", now=0.0) == 0  # other addresses go on
    assert throttle.retry_after("10.0.0.1", "client:other", now=1.5) == 0.5
    assert throttle.retry_after("10.0.0.1", "client:other", now=2.0) == 0


def test_one_name_guessed_from_many_addresses_is_throttled_too() -> None:
    throttle = LoginThrottle(burst=100, name_burst=4, refill=1.0)
    for i in range(4):
        throttle.failed(f"10.0.0.{i}", "client:alice", now=0.0)
    assert throttle.retry_after("10.9.9.9", "client:alice", now=0.0) == 1.0
    assert throttle.retry_after("10.9.9.9", "client:bob", now=0.0) == 0


def test_peer_text_escapes_what_could_forge_or_garble_a_log_line() -> None:
    assert peer_text("alice") == "alice"
    assert peer_text("x\n2026-01-01 INFO dispy_sched: user root connected") == (
        "x\\n2026-01-01 INFO dispy_sched: user root connected"
    )
    assert peer_text("a\rb\x1b[31mc\u2028d\x00") == "a\\rb\\x1b[31mc\\u2028d\\x00"
    assert peer_text("é ü 名前") == "é ü 名前"
    assert peer_text("y" * 1000) == "y" * 200 + "…"
