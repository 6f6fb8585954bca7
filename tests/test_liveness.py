"""The pure liveness state machine: when a link sends a Ping, and when it gives up on a silent peer."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from dispy_sched.config import ConfigError, config_from_args
from dispy_wire.liveness import DEFAULT_INTERVAL, MISSES, Liveness, Verdict, announced_interval, set_keepalive


def run(live: Liveness, until: float, step: float, *, hear: bool = False, send: bool = False) -> list[tuple[float, Verdict]]:
    """Checks every `step` s from just after the last check up to `until`; returns what was not OK."""
    out = []
    t = live.last_check
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


def first_silent(live: Liveness, until: float) -> float | None:
    """When checks every period from now on, hearing nothing, first find the peer silent."""
    return next((t for t, v in run(live, until, live.period) if v is Verdict.SILENT), None)


def test_a_silent_peer_is_given_up_after_misses_of_its_intervals_not_before() -> None:
    live = Liveness.start(send_every=1.0, expect_every=3.0, now=100.0)
    run(live, 110.0, live.period, hear=True, send=True)  # last heard at 110
    given_up = first_silent(live, 200.0)
    assert given_up is not None
    assert 110.0 + 3.0 * MISSES < given_up <= 110.0 + 3.0 * MISSES + live.period + 1e-9
    assert live.silence(given_up) == pytest.approx(given_up - 110.0)


def test_hearing_anything_restarts_the_count() -> None:
    live = Liveness.start(send_every=1.0, expect_every=1.0, now=0.0)
    assert all(v is Verdict.PING for _, v in run(live, 3.5, live.period))
    live.heard = True  # a byte, just before the check at 4.0
    given_up = first_silent(live, 60.0)
    assert given_up is not None and 4.0 + MISSES < given_up <= 4.0 + MISSES + live.period + 1e-9


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


def test_a_side_that_was_itself_stopped_does_not_blame_its_peer() -> None:
    live = Liveness.start(send_every=1.0, expect_every=1.0, now=0.0)
    run(live, 2.0, live.period, hear=True)
    # no check for a minute (we were SIGSTOPped): what the peer sent meanwhile is still unread
    assert live.check(62.0) is not Verdict.SILENT
    given_up = first_silent(live, 200.0)  # a peer that really is silent is still given up, a deadline later
    assert given_up is not None and 62.0 + MISSES < given_up <= 62.0 + MISSES + live.period + 1e-9


def test_the_scheduler_refuses_a_heartbeat_out_of_bounds(tmp_path: Path) -> None:
    state = ["--state-dir", str(tmp_path)]
    assert config_from_args(state).heartbeat == DEFAULT_INTERVAL
    assert config_from_args(["--heartbeat", "0.5", *state]).heartbeat == 0.5
    for bad in ("0", "-1", "1e9"):
        with pytest.raises(ConfigError, match=r"heartbeat: expected seconds .* (>= 0.05|<= 3600.0)"):
            config_from_args(["--heartbeat", bad, *state])


def test_a_peer_is_in_doubt_after_one_and_a_half_missed_intervals_long_before_it_is_given_up() -> None:
    live = Liveness.start(send_every=2.0, expect_every=2.0, now=0.0)
    run(live, 10.0, live.period, hear=True)  # last heard at 10
    assert not live.doubtful(12.5)
    run(live, 13.5, live.period)
    assert live.doubtful(13.5) and live.check(13.5) is not Verdict.SILENT
