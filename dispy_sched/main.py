"""`dispyscheduler`: command line, logging, signals, lifecycle."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from typing import IO, TYPE_CHECKING, NoReturn

from .config import ConfigError, SchedConfig, build_parser, config_from_namespace, describe
from .core import SchedulerCore
from .discovery import start_responder
from dispy_wire.leaving import leaving
from dispy_wire.loop import event_loop_factory
from dispy_wire.sdnotify import Notifier
from dispy_wire.tls import is_loopback
from dispy_wire.settings import EX_CONFIG
from dispy_wire.version import version_line

from .policies import Policy, UnknownPolicy, load_policy
from . import gcpolicy
from .server import SchedulerServer, step_down
from .accounting import AccountingStore, SqliteAccounting
from .journal import FILENAME as STATE_DATABASE, SqliteJournal, StateStore
from .standby import StandbyAnswer

if TYPE_CHECKING:
    from .leadership import Leadership
    from .standby_http import StandbyHttp

log = logging.getLogger("dispy_sched")


def _lock_state_dir(path: str) -> IO[str]:
    """Creates the state directory and holds its lock: one scheduler per state."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    lock = open(os.path.join(path, "lock"), "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        raise ConfigError(f"state directory {path} is in use by another dispyscheduler") from None
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


async def stand_by(cfg: SchedConfig, stop: asyncio.Event) -> Leadership | None:
    """Listens as a standby, answering every peer with the leader's address, until this scheduler leads.

    Returns its leadership (and fixes `cfg.port` to the port it listened
    on, so the leader serves where the standby answered), or None if
    stopped first.
    """
    from .leadership import Leadership  # here: psycopg is needed only with --state

    assert cfg.state is not None
    leadership = Leadership(cfg.state, "", cfg.lease)
    loop = asyncio.get_running_loop()
    tls = cfg.server_tls()
    answer = await loop.create_server(
        lambda: StandbyAnswer(lambda: leadership.seen.address), cfg.host, cfg.port, reuse_address=True,
        ssl=tls.context() if tls else None, ssl_handshake_timeout=cfg.handshake_timeout if tls else None,
    )  # fmt: skip
    host, port = answer.sockets[0].getsockname()[:2]
    cfg.port = port
    leadership.address = cfg.advertise or f"{_shown(host, cfg.name)}:{port}"
    http: StandbyHttp | None = None
    if cfg.http_port is not None:  # the standby's page and /metrics, on the port the leader's will use
        from .standby_http import StandbyHttp  # aiohttp: imported only by a scheduler that serves HTTP

        http = StandbyHttp(cfg, lambda: leadership.seen)
        http_host, cfg.http_port = await http.start(cfg.http_port)
        advertised = leadership.address.rpartition(":")[0] if host in ("0.0.0.0", "::") else _shown(http_host, cfg.name)
        leadership.http = f"{'https' if http.tls else 'http'}://{advertised}:{cfg.http_port}"
    halt = threading.Event()
    campaign = asyncio.ensure_future(asyncio.to_thread(leadership.campaign, halt))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        # nobody leads (the first scheduler, or the last one resigned): this one leads at once, and says
        # "listening" only once it does, so that nobody who waits for that line is sent away
        await asyncio.to_thread(leadership.polled.wait, 60)
        if not leadership.epoch:  # someone else leads: stand by, and say where we listen
            log.info("standing by on %s:%d (state in PostgreSQL; peers are sent to the leader)", host, port)
            print(f"listening on {host}:{port}", flush=True)
            if http is not None:
                print(f"http on {leadership.http} (standing by)", flush=True)
        await asyncio.wait({campaign, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        halt.set()
        leads = await campaign
        stopped.cancel()
        answer.close()
        await answer.wait_closed()
        if http is not None:  # the leader's own server takes the port over
            await http.stop()
    return leadership if leads else None


def _shown(host: str, name: str) -> str:
    """How peers are to reach a socket bound to `host`: this host's name if it is a wildcard address."""
    if host in ("0.0.0.0", "::"):
        return name
    return f"[{host}]" if ":" in host else host


async def serve(
    cfg: SchedConfig, policy: Policy, journal: StateStore | None, accounting: AccountingStore | None
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        signals.append(sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    notifier = Notifier.from_env()
    watchdog = asyncio.create_task(notifier.keep_alive())
    leadership = None
    store = journal
    try:
        if cfg.state is not None:
            notifier.ready("standing by")
            leadership = await stand_by(cfg, stop)
            if leadership is None:
                return
            from .pg_store import PgStore

            store = accounting = PgStore(cfg.state, leadership.epoch)  # the records go to PostgreSQL too
            leadership.keep(step_down)
        await _lead(cfg, policy, store, accounting, stop, signals, notifier, leadership)
    finally:
        watchdog.cancel()
        if leadership is not None:
            leadership.resign()
        if store is not None and store is not journal:
            store.close()


async def _lead(
    cfg: SchedConfig, policy: Policy, store: StateStore | None, accounting: AccountingStore | None,
    stop: asyncio.Event, signals: list[str], notifier: Notifier, leadership: Leadership | None,
) -> None:  # fmt: skip
    core_config = cfg.core_config(persist=store is not None, accounting=True)
    server = SchedulerServer(cfg, SchedulerCore(policy, core_config), store, accounting)
    if leadership is not None:  # clients see it in scheduler_status()
        server.leadership = leadership.seen
    core = server.core
    gcpolicy.tune(time.monotonic())  # full collections by the server's tick from now on (a standby keeps Python's)
    host, port = await server.start()
    responder = await start_responder(cfg, host, port)
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[None]] = set()  # held until done (the loop keeps only weak references)

    def reload() -> None:
        task = asyncio.create_task(server.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)  # re-reads the users file, as `dispyadmin reload` does
    log.info("policy %s; %s", core.policy.name, f"{len(cfg.users)} users" if cfg.users else "any user name")
    if cfg.tls_cert is not None:
        mutual = ", client certificates required" if cfg.tls_require_client_cert else ""
        log.info("TLS with certificate %s%s", cfg.tls_cert, mutual)
    elif cfg.insecure_plaintext and not is_loopback(cfg.host):
        log.warning(
            "--insecure-plaintext: listening on %s WITHOUT TLS: anyone on the path can read and alter "
            "computations, arguments and results, and impersonate this scheduler",
            cfg.host,
        )
    if cfg.state is None:
        print(f"listening on {host}:{port}", flush=True)
        notifier.ready(f"listening on {host}:{port}; policy {core.policy.name}")
    else:
        print(f"listening on {host}:{port}\nleading on {host}:{port}", flush=True)
        notifier.status(f"leading on {host}:{port}; policy {core.policy.name}")
    if server.http_url:
        print(f"http on {server.http_url}", flush=True)
    status = asyncio.create_task(_report_status(notifier, server, f"{host}:{port}"))
    try:
        await stop.wait()
    finally:
        why = f"scheduler {cfg.name} stopping ({signals[0] if signals else 'asked to'}); jobs keep running"
        if store is not None:
            log.info("shutting down: telling %d peers it is a restart", len(server.peers))
        else:
            log.info("shutting down without a journal: the next run will know none of the current jobs")
        notifier.stopping("shutting down")
        status.cancel()
        if responder is not None:
            responder.close()
        # with a journal a stop is a restart as far as peers can tell: what was accepted is in it, and nodes
        # keep their jobs for their grace; without one, peers see a lost connection (clients resubmit)
        await server.stop(restarting=why if store is not None else "")


#: seconds between the STATUS= lines `systemctl status` shows
STATUS_INTERVAL = 5.0


async def _report_status(notifier: Notifier, server: SchedulerServer, address: str) -> None:
    """Keeps systemd's STATUS= current: nodes, busy CPUs, queued jobs (`systemctl status dispyscheduler`)."""
    if not notifier.address:
        return
    while True:
        await asyncio.sleep(STATUS_INTERVAL)
        notifier.status(status_line(server, address))


def status_line(server: SchedulerServer, address: str) -> str:
    status = server.core.status()
    users = sum(1 for u in status["users"].values() if u["busy"] or u["queued"])
    return (
        f"{len(status['nodes'])} nodes, {status['busy']}/{status['cpus']} CPUs busy, {status['queued']} jobs queued, "
        f"{users} users active; listening on {address}"
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["tls"]:  # `dispyscheduler tls init DIR ...`: cryptography's x509 and key generation, 60 ms
        from . import tls_init  # of CPU to import, paid only by this command

        return tls_init.main(args[1:])
    try:
        options = build_parser().parse_args(argv)
        cfg = config_from_namespace(options)
        policy = load_policy(cfg.policy)
    except (ConfigError, UnknownPolicy) as exc:
        print(f"dispyscheduler: {exc}", file=sys.stderr)
        return EX_CONFIG
    if options.print_config:
        print(describe(cfg))
        return 0
    if options.check_config:
        print(f"dispyscheduler: configuration is valid ({len(cfg.users)} users)" if cfg.users else
              "dispyscheduler: configuration is valid (any user name)")  # fmt: skip
        return 0
    logging.basicConfig(
        level=cfg.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for key, better in (("secret", "--users-file (dispyadmin user add)"), ("node_secret", "--node-verifier (dispyadmin node-secret)")):
        if getattr(cfg, key):
            log.warning(
                "%s given in plaintext: the scheduler keeps only its verifier, but the secret is readable where it "
                "came from; prefer %s", key, better,
            )  # fmt: skip
    if cfg.state is not None:
        try:
            import psycopg  # noqa: F401  (the PostgreSQL store's driver, an optional dependency)
        except ImportError:
            print("dispyscheduler: --state postgresql://... needs psycopg: pip install 'dispy-shared[postgresql]'", file=sys.stderr)
            return EX_CONFIG
    log.info("%s starting", version_line("dispyscheduler"))
    try:
        assert cfg.state_dir is not None
        lock = _lock_state_dir(cfg.state_dir)
    except (ConfigError, OSError) as exc:
        print(f"dispyscheduler: {exc}", file=sys.stderr)
        return EX_CONFIG
    try:
        journal = SqliteJournal(cfg.state_dir, cfg.journal_sync) if cfg.journal and cfg.state is None else None
        # the journal keeps the records; without one, the same file does; with PostgreSQL, PgStore (`serve`)
        accounting: AccountingStore | None = journal
        if journal is None and cfg.state is None:
            accounting = SqliteAccounting(os.path.join(cfg.state_dir, STATE_DATABASE))
    except sqlite3.Error as exc:
        print(f"dispyscheduler: cannot open the state database in {cfg.state_dir}: {exc}", file=sys.stderr)
        lock.close()
        return 2
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(serve(cfg, policy, journal, accounting))
    except OSError as exc:  # typically: address in use
        where = "" if (exc.strerror or "").startswith("HTTP API") else f" on {cfg.host}:{cfg.port}"
        print(f"dispyscheduler: cannot listen{where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        if accounting is not None and accounting is not journal:
            accounting.close()
        if journal is not None:
            journal.close()
        lock.close()
    return 0


def run() -> NoReturn:
    """`dispyscheduler`: `main`, then the process exits (`leaving`: it is the process's last step)."""
    code = main()
    leaving()
    sys.exit(code)


if __name__ == "__main__":
    run()
