"""`dispynode`: command line, config file, signals, event loop.

Settings come from, in order of precedence: flags, the TOML file given with
`--config` (keys named like the flags, with underscores), the environment
($DISPY_SCHEDULER, $DISPY_NODE_SECRET), built-in defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import socket
import sys
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from . import report
from .conn import NodeConfig, run_node

logger = logging.getLogger(__name__)

DEFAULT_SCHEDULER = "127.0.0.1:9702"
_KEYS = ("scheduler", "cpus", "name", "node_secret", "heartbeat", "work_dir", "kill_grace", "loglevel")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dispynode",
        description=(
            "Compute-node daemon of dispy-shared: connects to a dispyscheduler, reports the CPUs "
            "it offers and runs each job in its own process, forked from a per-cluster zygote. "
            "Reconnects by itself; exits with status 2 if the scheduler refuses its name or secret."
        ),
        epilog=(
            "Settings: flags override the --config file, which overrides $DISPY_SCHEDULER and "
            "$DISPY_NODE_SECRET, which override the defaults. SIGTERM or SIGINT kills all jobs and exits."
        ),
    )
    p.add_argument("--config", metavar="FILE.toml", type=Path,
                   help="TOML file with keys " + ", ".join(_KEYS))  # fmt: skip
    p.add_argument("--scheduler", metavar="HOST:PORT",
                   help=f"scheduler address (default: $DISPY_SCHEDULER, else {DEFAULT_SCHEDULER})")  # fmt: skip
    p.add_argument("--cpus", type=int, metavar="N",
                   help="CPUs offered (default: all); a negative N leaves -N CPUs free")  # fmt: skip
    p.add_argument("--name", help="node name the scheduler knows us by (default: the host name)")
    p.add_argument("--node-secret", metavar="SECRET",
                   help="secret shared with the scheduler (default: $DISPY_NODE_SECRET, else empty)")  # fmt: skip
    p.add_argument("--heartbeat", type=float, metavar="SECONDS",
                   help="seconds between resource reports (default: 2)")  # fmt: skip
    p.add_argument("--work-dir", type=Path, metavar="DIR",
                   help="where clusters' files go, one directory each; give each node on a host its own "
                        "(default: <tmp>/dispynode-<uid>/<name>)")  # fmt: skip
    p.add_argument("--kill-grace", type=float, metavar="SECONDS",
                   help="seconds between SIGTERM and SIGKILL when a job is killed (default: 5)")  # fmt: skip
    p.add_argument("--loglevel", metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR (default: INFO)")
    return p


def load_config(args: argparse.Namespace, fail: Callable[[str], NoReturn]) -> tuple[NodeConfig, str]:
    """Merges flags, file, environment and defaults; returns the config and the log level.

    Args:
        fail: called with a message for a bad setting (`parser.error`).
    """
    file: dict[str, Any] = {}
    if args.config is not None:
        try:
            file = tomllib.loads(args.config.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            fail(f"cannot read config file {args.config}: {exc}")
        unknown = sorted(set(file) - set(_KEYS))
        if unknown:
            fail(f"unknown key(s) in {args.config}: {', '.join(unknown)}")

    def pick(key: str, env: str | None, default: Any) -> Any:
        flag = getattr(args, key)
        if flag is not None:
            return flag
        if key in file:
            return file[key]
        if env and env in os.environ:
            return os.environ[env]
        return default

    scheduler = str(pick("scheduler", "DISPY_SCHEDULER", DEFAULT_SCHEDULER))
    host, sep, port = scheduler.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        fail(f"scheduler address {scheduler!r} is not HOST:PORT")
    try:
        cpus = int(pick("cpus", None, 0))
        heartbeat = float(pick("heartbeat", None, 2.0))
        kill_grace = float(pick("kill_grace", None, 5.0))
    except (TypeError, ValueError) as exc:
        fail(f"bad number: {exc}")
    total = report.total_cpus()
    cpus = total if cpus == 0 else max(1, total + cpus) if cpus < 0 else cpus
    if heartbeat <= 0 or kill_grace < 0:
        fail("--heartbeat must be positive and --kill-grace not negative")
    name = str(pick("name", None, socket.gethostname()))
    if not name:
        fail("the node name must not be empty")
    default_dir = Path(tempfile.gettempdir()) / f"dispynode-{os.getuid()}" / re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    work_dir = Path(pick("work_dir", None, default_dir)).expanduser().absolute()
    loglevel = str(pick("loglevel", None, "INFO")).upper()
    if not isinstance(logging.getLevelName(loglevel), int):
        fail(f"unknown log level {loglevel!r}")
    secret = str(pick("node_secret", "DISPY_NODE_SECRET", ""))
    config = NodeConfig(host, int(port), cpus, name, secret, heartbeat, work_dir, kill_grace)
    return config, loglevel


def _make_work_dir(path: Path) -> None:
    """Creates the work directory, private to us: jobs' files are the users' data."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_uid != os.getuid():
        raise PermissionError(f"work directory {path} belongs to another user")


async def _serve(config: NodeConfig) -> int:
    """Runs the node until SIGTERM/SIGINT (exit 0) or a fatal refusal (exit 2)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    node = asyncio.create_task(run_node(config))
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({node, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if node.done():
        return node.result()
    logger.info("stopping: killing all jobs")
    node.cancel()  # the session's cleanup kills every job and zygote
    await asyncio.gather(node, return_exceptions=True)
    return 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    config, loglevel = load_config(args, parser.error)
    logging.basicConfig(level=loglevel, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        _make_work_dir(config.work_dir)
    except OSError as exc:
        logger.error("cannot use work directory: %s", exc)
        sys.exit(2)
    logger.info(
        "node %r offers %d cpus to %s; work dir %s", config.name, config.cpus, config.scheduler, config.work_dir
    )
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        sys.exit(runner.run(_serve(config)))


if __name__ == "__main__":
    main()
