"""How many CPUs the node offers, moment to moment: a pure function of time and load.

Theory of operation. The node offers `--cpus` CPUs, less whatever the rules
below take away; the heartbeat reports the result as `cpus`, and the
scheduler dispatches no more than that. Running jobs are never killed by an
offer going down (only `--service-end` kills, and it is an event, not an
offer). Nothing here reads a clock or the machine: `Availability.update`
takes the time of day and the load samples from its caller, so tests drive
it with a fake clock.

- Service window (`--service-start`, `--service-stop`, daily, may wrap
  midnight): outside it the node offers 0 CPUs.
- Service end (`--service-end`, daily): the moment it passes, running jobs
  are to be killed (`update` says so once per day), and the window is closed
  until the next service start (midnight without one).
- Yield to the machine's owner (`--yield-load F`, `--yield-window W`): when
  the load not caused by this node's jobs has stayed above F CPUs for W
  seconds, the node offers that many fewer CPUs (the smallest load seen in
  the window, rounded up); once it has stayed at or below F for W seconds,
  the node offers them again.
- Drain: offers 0 from then on.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import deque
from dataclasses import dataclass


def parse_hhmm(text: str) -> dt.time:
    """`"18:30"` → 18:30. Raises ValueError."""
    try:
        hours, minutes = (int(p) for p in text.split(":"))
        return dt.time(hours, minutes)
    except (ValueError, TypeError):
        raise ValueError(f"{text!r} is not a time of day HH:MM") from None


@dataclass(frozen=True, slots=True)
class Rules:
    cpus: int
    service_start: dt.time | None = None
    service_stop: dt.time | None = None
    service_end: dt.time | None = None
    yield_load: float | None = None  # CPUs of outside load tolerated
    yield_window: float = 60.0  # seconds the outside load must persist


class Availability:
    """The offer, updated from samples: `update(now, outside_load)` once per heartbeat."""

    def __init__(self, rules: Rules, now: dt.datetime) -> None:
        self.rules = rules
        self.draining = False
        self.yielded = 0  # CPUs given back to the machine's owner
        self._samples: deque[tuple[float, float]] = deque()  # (timestamp, outside load)
        self._last = now

    def offer(self, now: dt.datetime) -> int:
        """CPUs to offer at `now`."""
        if self.draining or not self.in_service(now):
            return 0
        return max(0, self.rules.cpus - self.yielded)

    def in_service(self, now: dt.datetime) -> bool:
        """Within the daily window, which closes at the service stop and at the service end, whichever comes first."""
        rules, t = self.rules, now.time()
        closes: list[dt.time | None] = [c for c in (rules.service_stop, rules.service_end) if c is not None] or [None]
        return all(self._within(rules.service_start, close, t) for close in closes)

    @staticmethod
    def _within(start: dt.time | None, stop: dt.time | None, t: dt.time) -> bool:
        """In [start, stop) of the day; a window that wraps midnight (22:00 to 06:00) works too,
        and a stop at 00:00 alone is the day's end."""
        if start is None or stop is None:
            return (start is None or t >= start) and (stop is None or stop == dt.time(0) or t < stop)
        if start <= stop:
            return start <= t < stop or start == stop
        return t >= start or t < stop

    def update(self, now: dt.datetime, outside_load: float) -> bool:
        """Takes a sample; returns True if the service end passed since the last update."""
        ended = self._passed(self.rules.service_end, self._last, now)
        self._last = now
        if self.rules.yield_load is not None:
            self._sample(now.timestamp(), outside_load)
        return ended

    def _sample(self, t: float, load: float) -> None:
        window, limit = self.rules.yield_window, self.rules.yield_load
        assert limit is not None
        self._samples.append((t, load))
        while len(self._samples) > 1 and self._samples[1][0] <= t - window:
            self._samples.popleft()  # keep one sample at or before the window's start
        if self._samples[0][0] > t - window:
            return  # not watched for a whole window yet
        loads = [x for _, x in self._samples]
        if min(loads) > limit:
            self.yielded = min(self.rules.cpus, math.ceil(min(loads)))
        elif max(loads) <= limit:
            self.yielded = 0

    @staticmethod
    def _passed(mark: dt.time | None, before: dt.datetime, now: dt.datetime) -> bool:
        """True if a daily `mark` lies in (before, now]."""
        if mark is None or now <= before:
            return False
        day = before.date()
        while day <= now.date():
            moment = dt.datetime.combine(day, mark, tzinfo=now.tzinfo)
            if before < moment <= now:
                return True
            day += dt.timedelta(days=1)
        return False
