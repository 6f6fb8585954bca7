"""The pure liveness state machine: when a link sends a Ping, and when it gives up on a silent peer."""

from __future__ import annotations

import socket

import pytest

from dispy_wire.liveness import MISSES, Liveness, Verdict, announced_interval, set_keepalive


def run(live: Liveness, until: float, step: float, *, hear: bool = False, send: bool = False) -> list[tuple[float, Verdict]]:
    """Checks every `step` s from just after the last check up to `until`; returns what was not OK."""
    out = []
    t = max(live.last_heard, live.last_sent)
    while t + step <= until + 1e-9:
        t += step
        live.heard = live.heard or hear
        live.sent = live.sent or send
        verdict = live.check(t)
        if verdict is not Verdict.OK:
            out.append((t, verdict))
    return out


def test_an_idle_link_pings_about_once_an_interval() -> None:
    live = Liveness.start(send_every=2.0, expect_every=2.0, now=0.0)
    pings = [t for t, v in run(live, 7.0, live.period, hear=True) if v is Verdict.PING]
    assert len(pings) == 3
    gaps = [b - a for a, b in zip([0.0, *pings], pings)]
    assert all(1.0 <= g <= 2.0 for g in gaps), gaps


def test_a_busy_link_sends_no_ping() -> None:
    live = Liveness.start(send_every=2.0, expect_every=2.0, now=0.0)
    assert run(live, 60.0, live.period, hear=True, send=True) == []


def test_a_silent_peer_is_given_up_after_misses_of_its_intervals_not_before() -> None:
    live = Liveness.start(send_every=1.0, expect_every=3.0, now=100.0)
    run(live, 110.0, live.period, hear=True, send=True)  # last heard at 110
    assert live.check(110.0 + 3.0 * MISSES) is not Verdict.SILENT
    verdict = live.check(110.0 + 3.0 * MISSES + live.period)
    assert verdict is Verdict.SILENT
    assert live.silence(110.0 + 3.0 * MISSES + live.period) == pytest.approx(3.0 * MISSES + live.period)


def test_hearing_anything_restarts_the_count() -> None:
    live = Liveness.start(send_every=1.0, expect_every=1.0, now=0.0)
    assert all(v is Verdict.PING for _, v in run(live, 3.5, live.period, send=False))
    live.heard = True
    assert live.check(3.6) is not Verdict.SILENT
    assert live.check(3.6 + MISSES - 0.1) is not Verdict.SILENT
    assert live.check(3.6 + MISSES + 0.1) is Verdict.SILENT


def test_the_check_period_suits_the_shorter_interval() -> None:
    assert Liveness.start(10.0, 0.5, 0.0).period == 0.25
    assert Liveness.start(0.5, 10.0, 0.0).period == 0.25


@pytest.mark.parametrize(
    ("info", "expected"),
    [({"heartbeat": 0.5}, 0.5), ({"heartbeat": 3}, 3.0), ({}, 7.0), ({"heartbeat": True}, 7.0),
     ({"heartbeat": "2"}, 7.0), ({"heartbeat": 0.0}, 7.0), ({"heartbeat": -1.0}, 7.0), ({"heartbeat": 1e9}, 7.0),
     ({"heartbeat": float("nan")}, 7.0)],
)  # fmt: skip
def test_an_announced_interval_out_of_bounds_gets_the_default(info: dict[str, object], expected: float) -> None:
    assert announced_interval(info, default=7.0) == expected


def test_keepalive_is_set_on_tcp_sockets_and_other_sockets_are_left_alone() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        set_keepalive(tcp)
        assert tcp.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert tcp.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
    a, b = socket.socketpair()
    with a, b:
        set_keepalive(a)  # a Unix socket: no error, nothing set
    set_keepalive(None)
