"""The client's network side: an event loop thread and the scheduler link.

User threads never touch the loop directly: they use `LoopThread.call` and
`LoopThread.run`, which go through the loop's thread-safe entry points.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, cast

from dispy_wire import messages as M
from dispy_wire.batching import BatchedWriter
from dispy_wire.errors import ErrorCode, NotLeaderError, RemoteWireError
from dispy_wire.framing import NEED_DATA, PREAMBLE, FrameDecoder
from dispy_wire.handshake import HandshakeState, PeerHandshake, Role
from dispy_wire.liveness import Liveness, Verdict, announced_interval, set_keepalive
from dispy_wire.loop import event_loop_factory
from dispy_wire.tls import ClientTLS, UntrustedScheduler, channel_binding, describe_failure, plaintext_refusal

from .errors import (
    AuthenticationError, LimitError, ProtocolError, SchedulerNotTrusted, SchedulerSilent, SchedulerUnreachable, StandingBy,
)  # fmt: skip

log = logging.getLogger("dispy_client")
T = TypeVar("T")

#: unsent bytes above which the link counts as congested (the scheduler reads slower than we submit)
WRITE_HIGH = 4 << 20
WRITE_LOW = 1 << 20


class LoopThread:
    """A daemon thread that runs one asyncio loop until `stop`."""

    def __init__(self, name: str) -> None:
        self.loop = event_loop_factory()()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Runs `coro` on the loop and waits for its result."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def call_if_running(self, fn: Callable[..., Any], *args: Any) -> None:
        """As `call`, but does nothing once the loop is closed (its cluster is gone)."""
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass

    @property
    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        if not self.in_loop_thread:
            self._thread.join(timeout=5)
            if not self._thread.is_alive():
                self.loop.close()


def _handshake_error(exc: RemoteWireError, where: str, user: str, by_certificate: bool) -> Exception:
    if isinstance(exc, NotLeaderError):
        return StandingBy(f"scheduler {where}: {exc.message}", exc.leader)
    if exc.code is ErrorCode.LOGIN_FAILED and by_certificate:
        return AuthenticationError(
            f"scheduler {where} rejected user {user!r}: unknown user, or one its users file does not let "
            "log in by certificate (certificate = true)"
        )
    if exc.code is ErrorCode.LOGIN_FAILED:
        return AuthenticationError(f"scheduler {where} rejected user {user!r}: unknown user or wrong secret")
    if exc.code is ErrorCode.CERTIFICATE:
        return AuthenticationError(f"scheduler {where} refused the login of user {user!r} by certificate: {exc.message}")
    if exc.code in (ErrorCode.THROTTLED, ErrorCode.SERVER_NOT_VERIFIED, ErrorCode.CHANNEL_BINDING):
        return AuthenticationError(f"scheduler {where}: {exc.message}")
    if exc.code is ErrorCode.LIMIT:
        return LimitError(f"scheduler {where} refused user {user!r}: {exc.message}")
    if exc.code is ErrorCode.BAD_VERSION:
        return ProtocolError(f"scheduler {where}: {exc.message}")
    return ProtocolError(f"scheduler {where} refused the connection: {exc.message} ({exc.code})")


class SchedulerLink(asyncio.Protocol):
    """One authenticated connection from a client to the scheduler.

    Args:
        on_message: called on the loop thread for every message after Welcome.
        on_lost: called once when the connection ends after Welcome.
    """

    def __init__(
        self,
        user: str,
        secret: str,
        info: dict[str, Any],
        on_message: Callable[[M.Message], None],
        on_lost: Callable[[str], None],
        tls: ClientTLS | None = None,
    ) -> None:
        self._user, self._info = user, info
        # no secret but a certificate of ours: log in by the certificate (EXTERNAL)
        self._secret: str | None = None if not secret and tls is not None and tls.cert else secret
        self._handshake: PeerHandshake | None = None  # made once the channel is known: logins bind to it
        self._tls = tls
        #: the TLS session (None: plaintext)
        self.ssl_object: ssl.SSLObject | None = None
        self._decoder = FrameDecoder()
        self._on_message = on_message
        self._on_lost = on_lost
        self._writer: BatchedWriter | None = None
        self.transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[M.Welcome] = asyncio.get_running_loop().create_future()
        self.where = "?"
        self.welcome: M.Welcome | None = None
        #: silence both ways once `watch` starts it; the reason a silent scheduler was given up
        self.liveness: Liveness | None = None
        self._watch: asyncio.TimerHandle | None = None
        self._gave_up = ""
        #: the transport is above WRITE_HIGH; `on_writable` is called when it is below WRITE_LOW again
        self.paused = False
        self.on_writable: Callable[[], None] | None = None
        #: the scheduler said it is restarting (`Restarting`): its close that follows is no failure
        self.restarting: M.Restarting | None = None
        #: called at each liveness check while the scheduler has missed a sign of life (the silence, s)
        self.on_doubt: Callable[[float], None] | None = None

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        timeout: float,
        user: str,
        secret: str,
        info: dict[str, Any],
        on_message: Callable[[M.Message], None],
        on_lost: Callable[[str], None],
        tls: ClientTLS | None = None,
        insecure_plaintext: bool = False,
        dial: str | None = None,
        several: bool = False,
        pipe: Callable[[asyncio.Protocol], None] | None = None,
    ) -> SchedulerLink:
        """Connects and authenticates within `timeout` seconds.

        With `tls`, the TLS handshake and the scheduler's proof of identity
        come first: an untrusted scheduler is sent no byte of ours. `dial`
        is the address to connect to when `host` is a name that stands for
        several (dispy_wire/dialing.py); the certificate must still name `host`.
        `several`: it is one of several addresses to try, so silence is more
        likely a stopped scheduler than a TLS one (the caller says which it tried).
        `pipe`: joins the link to a scheduler in this process instead of
        dialing (pipe.py; `tls` is then not used: no byte leaves the process).

        Raises:
            SchedulerUnreachable, AuthenticationError, ProtocolError,
            SchedulerNotTrusted (its certificate failed, or plaintext off loopback
            without `insecure_plaintext`).
        """
        loop = asyncio.get_running_loop()
        where = f"{host}:{port}" if dial in (None, host) else f"{host}:{port} ({dial})"
        refusal = plaintext_refusal(host, tls is not None, insecure_plaintext)
        if refusal is not None:
            raise SchedulerNotTrusted(
                f"not connecting to scheduler {where}: {refusal}; pass tls_ca= (or tls_fingerprint=), "
                "or insecure_plaintext=True to take that risk"
            )
        link = cls(user, secret, info, on_message, on_lost, None if pipe else tls)
        link.where = where
        context = tls.context() if tls is not None and pipe is None else None
        try:
            async with asyncio.timeout(timeout):
                if pipe is not None:
                    pipe(link)
                else:
                    await loop.create_connection(
                        lambda: link, dial or host, port, ssl=context, server_hostname=host if context else None
                    )
                await link.ready
        except TimeoutError:
            link.close()
            hint = "" if tls or several else " (one that serves TLS does not answer a plaintext client: pass tls_ca=)"
            # (to a tenth: a budget cut to what is left of the caller's reads 1.997 s for its 2 s on a busy machine)
            raise SchedulerSilent(f"scheduler {where} did not answer within {round(timeout, 1):g} s{hint}") from None
        except ssl.SSLCertVerificationError as exc:
            raise SchedulerNotTrusted(
                f"scheduler {where} is not trusted: {describe_failure(exc)}; nothing was sent to it"
            ) from None
        except UntrustedScheduler as exc:
            raise SchedulerNotTrusted(f"scheduler {where} is not trusted: {exc}; nothing was sent to it") from None
        except ssl.SSLError as exc:
            raise SchedulerNotTrusted(
                f"TLS with scheduler {where} failed: {describe_failure(exc)} (does it serve TLS?); nothing was sent to it"
            ) from None
        except OSError as exc:
            raise SchedulerUnreachable(f"cannot reach scheduler {where}: {exc.strerror or exc}") from None
        except RemoteWireError as exc:
            link.close()
            raise _handshake_error(exc, where, user, link.by_certificate) from None
        return link

    @property
    def by_certificate(self) -> bool:
        """Whether we log in by our TLS client certificate rather than a secret."""
        return self._secret is None

    # ---------------------------------------------------------- asyncio hooks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_LOW)
        loop = asyncio.get_running_loop()
        self._writer = BatchedWriter(loop.call_soon, self.transport.write, self.transport.is_closing)
        self.ssl_object = transport.get_extra_info("ssl_object")
        if self._tls is not None:
            try:
                self._tls.check(self.ssl_object)  # the pinned fingerprint, before our first byte
            except UntrustedScheduler as exc:
                self.ready.set_exception(exc)
                self.transport.abort()
                return
        binding = channel_binding(self.ssl_object)
        self._handshake = PeerHandshake(Role.CLIENT, self._user, self._secret, self._info, binding)
        self.transport.write(PREAMBLE)

    def data_received(self, data: bytes) -> None:
        if self.liveness is not None:
            self.liveness.heard = True
        self._decoder.feed(data)
        while True:
            try:
                msg = M.next_message(self._decoder)
            except RemoteWireError as exc:
                self._fail(exc)
                return
            if msg is NEED_DATA:
                return
            assert isinstance(msg, M.Message)
            if not self.ready.done():
                assert self._handshake is not None
                try:
                    reply = self._handshake.receive(msg)
                except RemoteWireError as exc:
                    self._fail(exc)
                    return
                if isinstance(reply, M.Welcome):
                    self.welcome = reply
                    self.ready.set_result(reply)
                else:
                    self.send(reply)
            elif isinstance(msg, M.Refused):
                log.error("scheduler %s closed the connection: %s (%s)", self.where, msg.message, msg.code)
                self.close()
                return
            elif isinstance(msg, M.Restarting):
                self.restarting = msg
            elif not isinstance(msg, M.Ping):  # a Ping's bytes were the sign of life
                self._on_message(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self.welcome is None:  # never authenticated: `connect` reports why
            if self.ready.done():
                return
            if isinstance(exc, ssl.SSLError):  # e.g. mutual TLS: our certificate missing or not trusted
                self.ready.set_exception(
                    AuthenticationError(f"scheduler {self.where} refused our TLS connection: {describe_failure(exc)}")
                )
            elif self.ssl_object is not None and self._handshake is not None and self._handshake.state is HandshakeState.AWAIT_CHALLENGE:
                # a scheduler that refuses our certificate (or its absence) closes without a word
                self.ready.set_exception(
                    AuthenticationError(
                        f"scheduler {self.where} closed the TLS connection before its challenge: it may require "
                        "a client certificate signed by its CA (certfile=, keyfile=)"
                    )
                )
            else:
                self.ready.set_exception(SchedulerUnreachable(f"scheduler {self.where} closed the connection"))
            return
        self._on_lost(self._gave_up or (str(exc) if exc else "connection closed"))

    # ------------------------------------------------------------- liveness

    def watch(self, send_every: float) -> None:
        """From login on: a Ping when we have sent nothing for `send_every` s (the interval our Hello
        announced), and the connection dropped when the scheduler sent nothing for MISSES of its own."""
        assert self.welcome is not None
        expect = announced_interval(self.welcome.info)
        self.liveness = Liveness.start(send_every, expect, time.monotonic())
        if self.transport is not None:
            set_keepalive(self.transport.get_extra_info("socket"))
        self._watch = asyncio.get_running_loop().call_later(self.liveness.period, self._check)

    def _check(self) -> None:
        live = self.liveness
        if live is None or self.transport is None or self.transport.is_closing():
            return
        now = time.monotonic()
        verdict = live.check(now)
        if verdict is Verdict.SILENT:
            self.give_up(f"silent for {live.silence(now):.1f} s (it promised a sign of life every {live.expect_every:g} s)")
            return
        if verdict is Verdict.PING:
            self.send(M.Ping())
        if self.on_doubt is not None and live.doubtful(now):
            self.on_doubt(live.silence(now))
        self._watch = asyncio.get_running_loop().call_later(live.period, self._check)

    def give_up(self, reason: str) -> None:
        """Drops the connection (the scheduler is silent, or another leads): `on_lost` hears `reason`."""
        if self.transport is None or self.transport.is_closing():
            return
        self._gave_up = reason
        log.warning("scheduler %s %s: closing the connection", self.where, reason)
        self.transport.abort()  # nothing to flush to a scheduler that reads nothing

    def _fail(self, exc: RemoteWireError) -> None:
        if not self.ready.done():
            self.ready.set_exception(exc)
        else:
            log.error("bad data from scheduler %s: %s", self.where, exc.message)
        self.close()

    # --------------------------------------------------------------- output

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.on_writable is not None:
            self.on_writable()

    def congested(self) -> bool:
        """Whether what we queued but the scheduler has not taken is above the mark (submits should wait)."""
        if self.paused:
            return True
        queued = self._writer.queued if self._writer is not None else 0
        return queued + (self.transport.get_write_buffer_size() if self.transport is not None else 0) >= WRITE_HIGH

    def send(self, msg: M.Message) -> None:
        if self.liveness is not None:
            self.liveness.sent = True
        if self._writer is not None:
            self._writer.send(M.encode(msg))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            if self._writer is not None:
                self._writer.flush()
            self.transport.close()
