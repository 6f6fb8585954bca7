"""The CPU offer (service windows, service end, yielding, drain) and the limits' arithmetic,
as pure functions of a fake clock and fake load samples."""

from __future__ import annotations

import datetime as dt

import pytest

from dispy_node.availability import Availability, Rules, parse_hhmm
from dispy_node.limits import BadOption, Limits, effective
from dispy_wire.limits import format_size, parse_size

DAY = dt.datetime(2026, 11, 26, tzinfo=dt.timezone.utc)


def at(hhmm: str, seconds: float = 0.0, days: int = 0) -> dt.datetime:
    t = parse_hhmm(hhmm)
    return DAY + dt.timedelta(days=days, hours=t.hour, minutes=t.minute, seconds=seconds)


def test_service_window_and_one_across_midnight() -> None:
    day = Availability(Rules(4, parse_hhmm("08:00"), parse_hhmm("18:00")), at("00:00"))
    assert [day.offer(at(t)) for t in ("07:59", "08:00", "17:59", "18:00")] == [0, 4, 4, 0]
    night = Availability(Rules(4, parse_hhmm("22:00"), parse_hhmm("06:00")), at("00:00"))
    assert [night.offer(at(t)) for t in ("21:59", "22:00", "03:00", "06:00")] == [0, 4, 4, 0]
    only_start = Availability(Rules(2, parse_hhmm("09:30")), at("00:00"))
    assert [only_start.offer(at(t)) for t in ("09:29", "09:30")] == [0, 2]


def test_service_end_fires_once_a_day() -> None:
    a = Availability(Rules(2, service_end=parse_hhmm("18:00")), at("17:58"))
    assert not a.update(at("17:59"), 0.0)
    assert a.update(at("18:00", 1), 0.0)
    assert not a.update(at("18:00", 3), 0.0)
    assert a.update(at("18:00", 1, days=1), 0.0)  # the next day, across a long gap too


def test_after_the_service_end_the_node_offers_nothing_until_the_next_start() -> None:
    # the end also closes the window: the killed reentrant jobs must go elsewhere, not straight back
    only_end = Availability(Rules(2, service_end=parse_hhmm("18:00")), at("00:00"))
    assert [only_end.offer(at(t)) for t in ("00:00", "17:59", "18:00", "23:59")] == [2, 2, 0, 0]
    day = Availability(Rules(4, parse_hhmm("08:00"), parse_hhmm("18:00"), parse_hhmm("17:00")), at("00:00"))
    assert [day.offer(at(t)) for t in ("07:59", "08:00", "16:59", "17:00", "18:00")] == [0, 4, 4, 0, 0]
    night = Availability(Rules(4, parse_hhmm("22:00"), service_end=parse_hhmm("06:00")), at("00:00"))
    assert [night.offer(at(t)) for t in ("21:59", "22:00", "05:59", "06:00")] == [0, 4, 4, 0]
    midnight = Availability(Rules(2, service_end=parse_hhmm("00:00")), at("00:00"))  # the day's end
    assert [midnight.offer(at(t)) for t in ("00:00", "12:00", "23:59")] == [2, 2, 2]


def test_yield_after_a_window_of_outside_load_and_back() -> None:
    a = Availability(Rules(4, yield_load=0.5, yield_window=60), at("12:00"))
    t = 0.0
    for load in (1.7, 1.6, 1.8):  # not a whole window yet
        a.update(at("12:00", t), load)
        assert a.offer(at("12:00", t)) == 4
        t += 20
    a.update(at("12:00", t), 1.5)  # 60 s of load above 0.5: give back ceil(min) = 2
    assert a.offer(at("12:00", t)) == 2
    a.update(at("12:00", t + 20), 0.1)  # one quiet sample is not enough to come back
    assert a.offer(at("12:00", t + 20)) == 2
    for dt_ in (40, 60, 80):
        a.update(at("12:00", t + dt_), 0.2)
    assert a.offer(at("12:00", t + 80)) == 4


def test_drain_offers_nothing() -> None:
    a = Availability(Rules(3), at("12:00"))
    a.draining = True
    assert a.offer(at("12:00")) == 0


def test_sizes() -> None:
    assert parse_size("512M") == 512 << 20
    assert parse_size("2G") == 2 << 30
    assert parse_size("1.5GiB") == 3 << 29
    assert parse_size(4096) == 4096
    for bad in ("", "12Q", "-1M", "0"):
        with pytest.raises(ValueError):
            parse_size(bad)
    assert format_size(512 << 20) == "512 MiB" and format_size(1000) == "1000 bytes"


def test_job_asks_less_than_the_cluster_never_more_than_the_node() -> None:
    caps = Limits(memory=1 << 30, wall=10.0)
    assert effective(caps, {}, {}) == caps
    assert effective(caps, {"timeout": 5, "memory": 2 << 30}, {}) == Limits(memory=1 << 30, wall=5)
    assert effective(caps, {"timeout": 5}, {"timeout": 7}) == Limits(memory=1 << 30, wall=7)
    assert effective(caps, {}, {"timeout": 70}).wall == 10.0
    assert effective(Limits(), {"cpu_time": 1.5, "open_files": 32}, {}) == Limits(cpu_time=1, open_files=32)
    with pytest.raises(BadOption, match="option timeout=True is not a positive number"):
        effective(caps, {}, {"timeout": True})
