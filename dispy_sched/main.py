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

from .config import ConfigError, SchedConfig, config_from_args
from .core import CoreConfig, SchedulerCore
from .discovery import start_responder
from dispy_wire.loop import event_loop_factory
from dispy_wire.sdnotify import Notifier
from dispy_wire.tls import is_loopback

from .policies import Policy, UnknownPolicy, load_policy
from . import tls_init
from .server import SchedulerServer
from .journal import SqliteJournal

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


async def serve(cfg: SchedConfig, policy: Policy, journal: SqliteJournal | None) -> None:
    core_config = CoreConfig(
        shares=cfg.shares(), limits=cfg.limits(), default_limits=cfg.default_limits(),
        private_data=cfg.private_data, keep_detached=cfg.keep_detached, usage_half_life=cfg.usage_half_life,
        persist=journal is not None,
    )  # fmt: skip
    server = SchedulerServer(cfg, SchedulerCore(policy, core_config), journal)
    core = server.core
    host, port = await server.start()
    responder = await start_responder(cfg, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
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
    print(f"listening on {host}:{port}", flush=True)
    if server.http_url:
        print(f"http on {server.http_url}", flush=True)
    notifier = Notifier.from_env()
    notifier.ready(f"listening on {host}:{port}; policy {core.policy.name}")
    watchdog = asyncio.create_task(notifier.keep_alive())
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        notifier.stopping("shutting down")
        watchdog.cancel()
        if responder is not None:
            responder.close()
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["tls"]:
        return tls_init.main(args[1:])  # `dispyscheduler tls init DIR ...`
    try:
        cfg = config_from_args(argv)
    except ConfigError as exc:
        print(f"dispyscheduler: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=cfg.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for key, better in (("secret", "--users-file (dispyadmin user add)"), ("node_secret", "--node-verifier (dispyadmin node-secret)")):
        if getattr(cfg, key):
            log.warning(
                "%s given in plaintext: the scheduler keeps only its verifier, but the secret is readable where it "
                "came from; prefer %s", key, better,
            )  # fmt: skip
    try:
        policy = load_policy(cfg.policy)
        assert cfg.state_dir is not None
        lock = _lock_state_dir(cfg.state_dir)
    except (ConfigError, UnknownPolicy, OSError) as exc:
        print(f"dispyscheduler: {exc}", file=sys.stderr)
        return 2
    try:
        journal = SqliteJournal(cfg.state_dir, cfg.journal_sync) if cfg.journal else None
    except sqlite3.Error as exc:
        print(f"dispyscheduler: cannot open the journal in {cfg.state_dir}: {exc}", file=sys.stderr)
        lock.close()
        return 2
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(serve(cfg, policy, journal))
    except OSError as exc:  # typically: address in use
        where = "" if (exc.strerror or "").startswith("HTTP API") else f" on {cfg.host}:{cfg.port}"
        print(f"dispyscheduler: cannot listen{where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        if journal is not None:
            journal.close()
        lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
