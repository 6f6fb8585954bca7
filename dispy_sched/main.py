"""`dispyscheduler`: command line, logging, signals, lifecycle."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import sqlite3
import sys
from typing import IO

from .config import ConfigError, SchedConfig, build_parser, config_from_namespace, describe
from .core import CoreConfig, SchedulerCore
from .discovery import start_responder
from dispy_wire.loop import event_loop_factory
from dispy_wire.sdnotify import Notifier
from dispy_wire.settings import EX_CONFIG
from dispy_wire.version import version_line
from dispy_wire.tls import is_loopback

from .policies import Policy, UnknownPolicy, load_policy
from . import tls_init
from .server import SchedulerServer
from .accounting import SqliteAccounting
from .journal import FILENAME as STATE_DATABASE, SqliteJournal

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


async def serve(
    cfg: SchedConfig, policy: Policy, journal: SqliteJournal | None, accounting: SqliteAccounting | None
) -> None:
    core_config = CoreConfig(
        shares=cfg.shares(), limits=cfg.limits(), default_limits=cfg.default_limits(),
        private_data=cfg.private_data, keep_detached=cfg.keep_detached, usage_half_life=cfg.usage_half_life,
        persist=journal is not None, accounting=True,
    )  # fmt: skip
    server = SchedulerServer(cfg, SchedulerCore(policy, core_config), journal, accounting)
    core = server.core
    host, port = await server.start()
    responder = await start_responder(cfg, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
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
    print(f"listening on {host}:{port}", flush=True)
    notifier = Notifier.from_env()
    notifier.ready(f"listening on {host}:{port}; policy {core.policy.name}")
    watchdog = asyncio.create_task(notifier.keep_alive())
    status = asyncio.create_task(_report_status(notifier, server, f"{host}:{port}"))
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        notifier.stopping("shutting down")
        watchdog.cancel()
        status.cancel()
        if responder is not None:
            responder.close()
        await server.stop()


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
    if args[:1] == ["tls"]:
        return tls_init.main(args[1:])  # `dispyscheduler tls init DIR ...`
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
    log.info("%s starting", version_line("dispyscheduler"))
    try:
        assert cfg.state_dir is not None
        lock = _lock_state_dir(cfg.state_dir)
    except (ConfigError, OSError) as exc:
        print(f"dispyscheduler: {exc}", file=sys.stderr)
        return EX_CONFIG
    try:
        journal = SqliteJournal(cfg.state_dir, cfg.journal_sync) if cfg.journal else None
        accounting = SqliteAccounting(os.path.join(cfg.state_dir, STATE_DATABASE))
    except sqlite3.Error as exc:
        print(f"dispyscheduler: cannot open the state database in {cfg.state_dir}: {exc}", file=sys.stderr)
        lock.close()
        return 2
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(serve(cfg, policy, journal, accounting))
    except OSError as exc:  # typically: address in use
        print(f"dispyscheduler: cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        if journal is not None:
            journal.close()
        accounting.close()
        lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
