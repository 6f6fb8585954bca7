"""The scheduler's HTTP server: the JSON API (/api/v1/...), Prometheus metrics (/metrics), the dashboard (/).

It runs on the scheduler's own event loop (aiohttp) and owns no state: reads
go through `views` at request time, changes are events handed to the core
(`SchedulerServer.ask`), whose answer is the response.

Who asks:
- an administrator: `Authorization: Bearer <token>`, the token in a 0600 file
  (by default `admin-token` in the state directory, made at the first start);
  sees and manages everything;
- a user: HTTP Basic with their wire name and secret, checked against the
  SCRAM verifier of the users file (the client key is derived from the
  secret and the verifier's salt and iterations, and its hash compared with
  the StoredKey), over TLS or on loopback only; sees and cancels only their
  own clusters and jobs. A refused login is counted (`dispy_logins_refused_total`),
  throttled per address and name as the wire's are, and logged (rate-limited).

Every error is JSON: `{"error": code, "message": text}` with its status code.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import math
import os
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from dispy_wire.discovery import Throttle
from dispy_wire.errors import ErrorCode
from dispy_wire.handshake import Role
from dispy_wire.schema import INT_MIN, INT_MAX
from dispy_wire.tls import is_loopback
from dispy_wire.verifier import Verifier

from . import views
from .config import ConfigError, SchedConfig, check_private
from .core import events as E
from .dashboard import Dashboard
from .gate import LoginThrottle
from .logsafe import peer_text
from .metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from .server import SchedulerServer

log = logging.getLogger(__name__)

ADMIN_TOKEN_NAME = "admin-token"
#: a user's checked secret is remembered this long (a PBKDF2 per request would cost 30-60 ms each)
LOGIN_CACHE_SECONDS = 300.0
LOGIN_CACHE_MAX = 1024
#: the core answers in the turn it gets a request; this only bounds a shutdown
ANSWER_TIMEOUT = 10.0
#: HTTP statuses of the core's error codes
_STATUS = {str(ErrorCode.UNKNOWN_CLUSTER): 404, str(ErrorCode.BAD_REQUEST): 400, str(ErrorCode.LIMIT): 409}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """A request refused: HTTP `status`, a machine-readable `code`, a message for people."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True, slots=True)
class Identity:
    #: the user who asks; None: an administrator
    user: str | None

    @property
    def admin(self) -> bool:
        return self.user is None

    def as_json(self) -> dict[str, Any]:
        return {"admin": True} if self.user is None else {"admin": False, "user": self.user}


def load_admin_token(path: str) -> str:
    """The token in `path`, made (256 bits, mode 600) if the file does not exist.

    Raises:
        ConfigError: a file others may read, or an empty one.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        check_private(path, os.stat(path).st_mode)
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
        if not token:
            raise ConfigError(f"admin token file {path} is empty") from None
        return token
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    log.info("made an admin token for the HTTP API in %s", path)
    return token


def error_response(status: int, code: str, message: str) -> web.Response:
    # Bearer, not Basic: a browser would answer a Basic challenge to the dashboard's own fetch() with its
    # login dialog; Basic credentials are still accepted (sent up front, as curl -u and dispyadmin do)
    headers = {"WWW-Authenticate": 'Bearer realm="dispy"'} if status == 401 else None
    return web.json_response({"error": code, "message": message}, status=status, headers=headers)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as JSON (`ApiError`s and aiohttp's own: no such route, wrong method, body too large)."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not-found", 405: "method-not-allowed", 413: "too-large"}.get(exc.status, "bad-request")
        return error_response(exc.status, code, f"{exc.reason}: {request.method} {request.path}")


class Logins:
    """Checks the `Authorization` header of a request.

    Args:
        config: the users' verifiers (read again in place on a reload).
        on_refused: counts a refused login (its argument: "http").
    """

    def __init__(self, config: SchedConfig, token: str, basic_allowed: bool, on_refused: Callable[[str], None]) -> None:
        self.config = config
        self._on_refused = on_refused
        self._token = token.encode()
        self.basic_allowed = basic_allowed
        self._throttle = LoginThrottle()
        self._refusals = Throttle(1.0)
        self._cache_key = os.urandom(32)
        self._fake_key = os.urandom(32)
        self._cache: dict[bytes, float] = {}

    def forget(self) -> None:
        """The users file was read again: secrets checked before must be checked anew."""
        self._cache.clear()

    async def identify(self, request: web.Request) -> Identity:
        header = request.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() == "bearer":
            if hmac.compare_digest(credentials.strip().encode(), self._token):
                return Identity(None)
            self._refused(request, "admin", "a wrong admin token")
        if scheme.lower() == "basic":
            return await self._basic(request, credentials.strip())
        raise ApiError(401, "unauthorized", "log in: an admin token (Authorization: Bearer) or your user name and secret")

    async def admin(self, request: web.Request) -> Identity:
        """The administrator, or ApiError 401/403."""
        who = await self.identify(request)
        if not who.admin:
            raise ApiError(403, "forbidden", "only an administrator (the admin token) may do this")
        return who

    async def _basic(self, request: web.Request, credentials: str) -> Identity:
        if not self.basic_allowed:
            raise ApiError(401, "unauthorized", "user logins need TLS (the scheduler's --tls-cert) or a loopback address")
        try:
            name, sep, secret = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            sep = ""
        if not sep or not name:
            raise ApiError(400, "bad-request", "Basic credentials must be base64 of NAME:SECRET")
        address = request.remote or "?"
        now = time.monotonic()
        wait = self._throttle.retry_after(address, name, now)
        if wait > 0:
            self._on_refused("http")
            raise ApiError(429, str(ErrorCode.THROTTLED), f"too many failed logins, retry in {wait:.0f} s")
        key = hmac.new(self._cache_key, f"{name}\0{secret}".encode(), hashlib.sha256).digest()
        if self._cache.get(key, 0.0) > now:
            return Identity(name)
        verifier = self.config.verifier_for(Role.CLIENT, name)
        # an unknown name costs the same hash as a known one with a wrong secret
        check = verifier if verifier is not None else Verifier.fake(self._fake_key, name)
        ok = await asyncio.get_running_loop().run_in_executor(None, _proves, check, secret)
        if not ok or verifier is None:
            self._throttle.failed(address, name, time.monotonic())
            self._refused(request, name, "an unknown name or a wrong secret")
        if len(self._cache) >= LOGIN_CACHE_MAX:
            self._cache = {k: t for k, t in self._cache.items() if t > now}
            if len(self._cache) >= LOGIN_CACHE_MAX:
                self._cache.clear()
        self._cache[key] = now + LOGIN_CACHE_SECONDS
        return Identity(name)

    def _refused(self, request: web.Request, name: str, why: str) -> None:
        self._on_refused("http")
        more = self._refusals.admit(time.monotonic())
        if more is not None:
            log.warning("HTTP login of %s from %s refused: %s%s", peer_text(name), request.remote, why, more)
        raise ApiError(401, str(ErrorCode.LOGIN_FAILED), "login failed")


def _proves(verifier: Verifier, secret: str) -> bool:
    """Whether `secret` is the one `verifier` was made from: H(ClientKey) == StoredKey (RFC 5802)."""
    try:
        derived = Verifier.from_secret(secret, verifier.iterations, verifier.salt)
    except ValueError:  # a secret SASLprep refuses was never anyone's
        return False
    return hmac.compare_digest(derived.stored_key, verifier.stored_key)


class HttpApi:
    """The routes; `start` binds them to `host`:`port` (TLS with `tls`)."""

    def __init__(self, server: SchedulerServer, token: str, host: str, tls: ssl.SSLContext | None) -> None:
        self.server = server
        self.host = host
        self.tls = tls
        self.logins = Logins(server.config, token, tls is not None or is_loopback(host), server.metrics_login_refused)
        self.started = time.time()
        self.app = web.Application(middlewares=[json_errors], client_max_size=64 << 10)
        get, post = web.get, web.post
        self.app.add_routes([
            get("/api/v1/status", self.status),
            get("/api/v1/users", self.users),
            get("/api/v1/nodes", self.nodes),
            get("/api/v1/clusters", self.clusters),
            get("/api/v1/jobs", self.jobs),
            post("/api/v1/jobs/{cluster}/{job}/cancel", self.cancel_job),
            post("/api/v1/clusters/{cluster}/cancel", self.cancel_cluster),
            post("/api/v1/nodes/{node}/drain", self.drain),
            post("/api/v1/nodes/{node}/undrain", self.undrain),
            post("/api/v1/nodes/{node}/cpus", self.set_cpus),
            post("/api/v1/users/{user}/share", self.set_share),
            post("/api/v1/reload", self.reload),
            get("/metrics", self.metrics),
        ])  # fmt: skip
        self.dashboard = Dashboard(self)
        self._runner: web.AppRunner | None = None
        self._sampler: asyncio.Task[None] | None = None
        self.address: tuple[str, int] = (host, 0)

    async def start(self, port: int) -> tuple[str, int]:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, port, ssl_context=self.tls, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None
        sockname = server.sockets[0].getsockname()  # type: ignore[attr-defined]
        self.address = (sockname[0], sockname[1])
        self._sampler = asyncio.create_task(self.dashboard.sample())
        return self.address

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------- reading

    async def status(self, request: web.Request) -> web.Response:
        who = await self.logins.identify(request)
        body = views.status(self.server.core, self.started, who.user, self.server.leadership)
        body["you"] = who.as_json()
        return web.json_response(body)

    async def users(self, request: web.Request) -> web.Response:
        who = await self.logins.identify(request)
        return web.json_response(views.users(self.server.core, who.user))

    async def nodes(self, request: web.Request) -> web.Response:
        await self.logins.identify(request)
        return web.json_response(views.nodes(self.server.core))

    async def clusters(self, request: web.Request) -> web.Response:
        who = await self.logins.identify(request)
        return web.json_response(views.clusters(self.server.core, who.user))

    async def jobs(self, request: web.Request) -> web.Response:
        who = await self.logins.identify(request)
        user, state = request.query.get("user"), request.query.get("state")
        if user is not None and not who.admin and user != who.user:
            raise ApiError(403, "forbidden", f"you may list only your own jobs (user {who.user})")
        if state is not None and state not in views.JOB_STATES:
            raise ApiError(400, "bad-request", f"state must be one of {', '.join(views.JOB_STATES)}, not {state!r}")
        return web.json_response(views.jobs(self.server.core, who.user, user, state))

    async def metrics(self, request: web.Request) -> web.Response:
        await self._admin(request)
        assert self.server.metrics is not None
        return web.Response(body=self.server.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    # ------------------------------------------------------------ managing

    async def cancel_job(self, request: web.Request) -> web.Response:
        who = await self.logins.identify(request)
        job = request.match_info["job"]
        if not job.isdigit():
            raise ApiError(400, "bad-request", f"a job id is a number, not {job!r}")
        cluster = request.match_info["cluster"]
        return await self._ask(request, who, lambda ref: E.CancelRequested(ref, who.user, cluster, (int(job),)))

    async def cancel_cluster(self, request: web.Request) -> web.Response:
        who = await self.logins.identify(request)
        cluster = request.match_info["cluster"]
        return await self._ask(request, who, lambda ref: E.CancelRequested(ref, who.user, cluster, None))

    async def drain(self, request: web.Request) -> web.Response:
        who = await self._admin(request)
        return await self._ask(request, who, lambda ref: E.NodeDrainSet(ref, request.match_info["node"], True))

    async def undrain(self, request: web.Request) -> web.Response:
        who = await self._admin(request)
        return await self._ask(request, who, lambda ref: E.NodeDrainSet(ref, request.match_info["node"], False))

    async def set_cpus(self, request: web.Request) -> web.Response:
        who = await self._admin(request)
        cpus = await _number(request, "cpus", int)
        return await self._ask(request, who, lambda ref: E.NodeCpusCapped(ref, request.match_info["node"], int(cpus)))

    async def set_share(self, request: web.Request) -> web.Response:
        who = await self._admin(request)
        share = await _number(request, "share", float)
        return await self._ask(request, who, lambda ref: E.UserShareSet(ref, request.match_info["user"], float(share)))

    async def reload(self, request: web.Request) -> web.Response:
        who = await self._admin(request)
        try:
            reloaded = self.server.read_users()
        except ConfigError as exc:
            raise ApiError(400, "bad-request", str(exc)) from None
        return await self._ask(request, who, reloaded)

    async def _admin(self, request: web.Request) -> Identity:
        return await self.logins.admin(request)

    async def _ask(self, request: web.Request, who: Identity, make: Callable[[str], E.Event]) -> web.Response:
        """Hands a request to the core; its answer is the response, and one log line says who did what."""
        try:
            answer = await asyncio.wait_for(self.server.ask(make), ANSWER_TIMEOUT)
        except TimeoutError:
            raise ApiError(503, str(ErrorCode.SHUTTING_DOWN), "the scheduler did not answer: it is stopping") from None
        asker = "admin" if who.admin else f"user {peer_text(who.user or '')}"
        outcome = f"refused: {answer.message} ({answer.error})" if answer.error else answer.message
        log.info("%s from %s: %s %s: %s", asker, request.remote, request.method, request.path, peer_text(outcome, 500))
        if answer.error:
            raise ApiError(_STATUS.get(answer.error, 400), answer.error, answer.message)
        return web.json_response({"ok": True, "message": answer.message})


async def _number(request: web.Request, key: str, kind: type[int] | type[float]) -> float:
    """`key` of the request's JSON object body, an int or (for float) any number."""
    try:
        body: Any = await request.json()
    except ValueError:
        raise ApiError(400, "bad-request", f'the body must be a JSON object such as {{"{key}": 2}}') from None
    value = body.get(key) if isinstance(body, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise ApiError(400, "bad-request", f'the body must be a JSON object such as {{"{key}": 2}}; got {body!r:.200}')
    if not (INT_MIN <= value <= INT_MAX and math.isfinite(value)):  # what the journal's columns hold
        raise ApiError(400, "bad-request", f"{key} out of range: {value!r:.50}")
    return value


def admin_token_file(config: SchedConfig) -> str:
    """Where the admin token is: `--admin-token-file`, else `admin-token` in the state directory."""
    assert config.state_dir is not None
    return config.admin_token_file or os.path.join(config.state_dir, "admin-token")


def http_tls(config: SchedConfig) -> ssl.SSLContext | None:
    """HTTPS with the wire's certificate if the scheduler has one."""
    return tls_context(config.tls_cert, config.tls_key) if config.tls_cert else None


def tls_context(cert: str, key: str | None) -> ssl.SSLContext:
    """A server context with the scheduler's own certificate (no client certificates asked for)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context
