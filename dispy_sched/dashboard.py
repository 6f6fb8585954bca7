"""The dashboard: a static page (dispy_sched/static/, shipped in the package) and its live feed.

`GET /` serves the page, which asks who you are (the admin token, or a user's
name and secret) and reads `GET /api/v1/events`: server-sent events, one
`snapshot` (status, users, nodes, clusters, jobs, the busy and fair-share CPUs
per user over the last hour) when it connects and one each time what the
viewer may see changes: checked after the core's next turn, at most every
`MIN_INTERVAL`.
Management buttons call the JSON API.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from . import views

if TYPE_CHECKING:
    from .httpd import HttpApi, Identity

_T = TypeVar("_T")

#: an open page's snapshot is recomputed (and sent if it changed) after the core's next turn, at most this
#: often, and at least every PUSH_INTERVAL
MIN_INTERVAL = 0.5
PUSH_INTERVAL = 1.0
#: a comment line this often keeps proxies from closing a quiet stream
KEEPALIVE = 15.0
#: busy and fair-share CPUs per user sampled this often, for an hour
HISTORY_STEP = 10.0
HISTORY_POINTS = 360
#: jobs listed in a snapshot at most (the counts in `status` cover the rest): a snapshot of 1,000 running
#: jobs costs the loop about 30 ms on a loaded machine, of 500 about half that
MAX_JOBS = 500
#: the files of dispy_sched/static/ and their types; common.js and style.css are also a program's cluster page's
#: (cluster.html, cluster.js: dispy_client/httpd.py serves them from here)
STATIC = {
    "index.html": "text/html", "app.js": "text/javascript", "common.js": "text/javascript", "style.css": "text/css",
    "cluster.html": "text/html", "cluster.js": "text/javascript",
}  # fmt: skip


def static_file(name: str) -> bytes:
    """A file of the package's static/ directory (shipped as package data)."""
    return (resources.files("dispy_sched") / "static" / name).read_bytes()


class Dashboard:
    def __init__(self, api: HttpApi) -> None:
        self.api = api
        #: (time, {user: busy CPUs}, {user: fair-share CPUs}) every HISTORY_STEP seconds
        self.history: deque[tuple[float, dict[str, int], dict[str, float]]] = deque(maxlen=HISTORY_POINTS)
        #: the last snapshot's JSON per viewer, with the core turn it shows: pages of one viewer share it
        self._cache: dict[str | None, tuple[int, str]] = {}
        self._files = {name: static_file(name) for name in STATIC}
        api.app.add_routes([
            web.get("/", self.page),
            web.get("/static/{name}", self.static),
            web.get("/api/v1/events", self.events),
        ])  # fmt: skip

    async def sample(self) -> None:
        while True:
            self.history.append(self._cpus())
            await asyncio.sleep(HISTORY_STEP)

    def _cpus(self) -> tuple[float, dict[str, int], dict[str, float]]:
        """A point of the chart: now, each user's busy CPUs and those fair share counts (`views.users`' busy and
        load), users with none left out."""
        users = self.api.server.core.users.values()
        busy = {u.name: u.busy - u.waiting for u in users if u.busy > u.waiting}
        return time.time(), busy, {u.name: round(u.load, 2) for u in users if u.busy}

    async def page(self, request: web.Request) -> web.Response:
        return self._file("index.html")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        return self._file(name)

    def _file(self, name: str) -> web.Response:
        return web.Response(body=self._files[name], content_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    def snapshot_json(self, who: Identity) -> str:
        turn = self.api.server.turns
        cached = self._cache.get(who.user)
        if cached is None or cached[0] != turn:
            if len(self._cache) > 1000:  # viewers who left
                self._cache.clear()
            cached = self._cache[who.user] = (turn, json.dumps(self.snapshot(who), separators=(",", ":")))
        return cached[1]

    def snapshot(self, who: Identity) -> dict[str, Any]:
        core = self.api.server.core
        jobs = views.jobs(core, who.user)
        history = [
            {"t": t, "busy": _seen(busy, who), "load": _seen(load, who)}
            for t, busy, load in (*self.history, self._cpus())  # the lines reach the present
        ]
        return {
            "status": {**views.status(core, self.api.started, who.user, self.api.server.leadership), "you": who.as_json()},
            "users": views.users(core, who.user),
            "nodes": views.nodes(core),
            "clusters": views.clusters(core, who.user),
            "jobs": jobs[:MAX_JOBS],
            "jobs_total": len(jobs),
            "history": history,
        }

    async def events(self, request: web.Request) -> web.StreamResponse:
        who = await self.api.logins.identify(request)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        server = self.api.server
        last, sent = "", time.monotonic()
        try:
            while True:
                seen = server.turns
                body = self.snapshot_json(who)
                if body != last:
                    await response.write(f"event: snapshot\ndata: {body}\n\n".encode())
                    last, sent = body, time.monotonic()
                elif time.monotonic() - sent >= KEEPALIVE:
                    await response.write(b": keep-alive\n\n")
                    sent = time.monotonic()
                await asyncio.sleep(MIN_INTERVAL)  # a busy scheduler's turns coalesce into one snapshot
                if server.turns == seen:  # nothing happened since this snapshot: wait for something to
                    try:
                        await asyncio.wait_for(asyncio.shield(server.next_turn()), PUSH_INTERVAL)
                    except TimeoutError:
                        pass
        except ConnectionResetError:
            pass  # the page was closed
        return response


def _seen(per_user: dict[str, _T], who: Identity) -> dict[str, _T]:
    """What of a chart's point the viewer may see: every user for an administrator, else their own."""
    return per_user if who.admin else {k: v for k, v in per_user.items() if k == who.user}
