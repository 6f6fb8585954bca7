"""A standby scheduler's HTTP server (with `--http-port`): it says that it stands by, and who leads.

A standby holds no cluster, node or job (the leader does), so on the port
its own dashboard will use once it takes over it serves only:

- `GET /`: a page saying it stands by, with a link to the leader's dashboard;
  the page reloads itself, so after a takeover it shows the dashboard;
- `GET /api/v1/status` (any login, as on the leader): its role and the leader;
- `GET /metrics` (the admin token): `dispy_scheduler_leading 0` and the
  leader (metrics.LeadershipCollector), and its refused logins.

Every other API path answers 503 `not-leader` naming the leader (and its
HTTP API), so that `dispyadmin` says where to go instead of "not found".
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest

from dispy_wire.errors import ErrorCode
from dispy_wire.tls import is_loopback

from .config import SchedConfig
from .httpd import ApiError, Logins, admin_token_file, http_tls, json_errors, load_admin_token
from .metrics import CONTENT_TYPE, LeadershipCollector, logins_refused
from .standby import LeaderInfo
from .views import version

#: seconds between the standby page's reloads
PAGE_REFRESH = 5


class StandbyHttp:
    """The routes of a standby; `start` binds them to `config.http_host`:`port`.

    Args:
        leader: the leader as last read from the database.
    """

    def __init__(self, config: SchedConfig, leader: Callable[[], LeaderInfo]) -> None:
        self.config = config
        self.leader = leader
        self.started = time.time()
        self.tls = http_tls(config)
        self.registry = CollectorRegistry(auto_describe=True)
        refused = logins_refused(self.registry)
        self.registry.register(LeadershipCollector(False, leader))
        token = load_admin_token(admin_token_file(config))
        basic_allowed = self.tls is not None or is_loopback(config.http_host)
        self.logins = Logins(config, token, basic_allowed, lambda via: refused.labels(via).inc())
        self.app = web.Application(middlewares=[json_errors], client_max_size=64 << 10)
        self.app.add_routes([
            web.get("/", self.page),
            web.get("/api/v1/status", self.status),
            web.get("/metrics", self.metrics),
            web.route("*", "/api/v1/{rest:.*}", self.elsewhere),
        ])  # fmt: skip
        self._runner: web.AppRunner | None = None

    async def start(self, port: int) -> tuple[str, int]:
        """Raises OSError (its message says "HTTP API") if the port cannot be bound."""
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.http_host, port, ssl_context=self.tls, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise OSError(exc.errno, f"HTTP API: {exc.strerror or exc}") from None
        server = site._server
        assert server is not None
        sockname = server.sockets[0].getsockname()  # type: ignore[attr-defined]
        return sockname[0], sockname[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def page(self, request: web.Request) -> web.Response:
        info = self.leader()
        if info.address:
            since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info.since))
            leader = f"The leader is <b>{html.escape(info.address)}</b> (epoch {info.epoch}, since {since})."
            if info.http.startswith(("http://", "https://")):
                url = html.escape(info.http.rstrip("/") + "/", quote=True)
                leader += f' <a id="leader" href="{url}">Its dashboard</a>.'
        else:
            leader = "No scheduler leads at the moment: a takeover is under way."
        body = (
            '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="refresh" content="{PAGE_REFRESH}">'
            "<title>dispy-shared scheduler: standing by</title></head>\n<body><h1>dispy-shared</h1>\n"
            f'<p id="standby">This scheduler ({html.escape(self.config.name)}) stands by: it takes over if the '
            f"leader stops. {leader}</p>\n</body></html>\n"
        )
        return web.Response(text=body, content_type="text/html", headers={"Cache-Control": "no-cache"})

    async def status(self, request: web.Request) -> web.Response:
        who = await self.logins.identify(request)
        info = self.leader()
        return web.json_response({
            "version": version(),
            "role": "standby",
            "leader": info.as_json() if info.address else None,
            "started": self.started,
            "uptime": max(0.0, time.time() - self.started),
            "you": who.as_json(),
        })  # fmt: skip

    async def metrics(self, request: web.Request) -> web.Response:
        await self.logins.admin(request)
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE})

    async def elsewhere(self, request: web.Request) -> web.Response:
        await self.logins.identify(request)
        info = self.leader()
        where = f"the leader is {info.address}" if info.address else "no scheduler leads at the moment"
        if info.http:
            where += f" (its HTTP API: {info.http})"
        raise ApiError(503, str(ErrorCode.NOT_LEADER), f"this scheduler stands by; {where}")
