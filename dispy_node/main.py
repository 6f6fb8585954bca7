"""`dispynode`: command line, config file, signals, event loop.

Settings come from, in order of precedence: flags, the TOML file given with
`--config` (keys named like the flags, with underscores), the environment
($DISPY_SCHEDULER, $DISPY_NODE_SECRET), built-in defaults. The node secret
has sources of its own (a file, a systemd credential) and is kept from the
jobs: see node_secret.py. `--discover` takes
the place of a scheduler address: the node finds one by UDP broadcast.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from typing import Any, NoReturn, TypeVar

from dispy_wire import isolation
from dispy_wire.discovery import DISCOVERY_PORT
from dispy_wire.limits import format_size, parse_size
from dispy_wire.leaving import leaving
from dispy_wire.loop import event_loop_factory
from dispy_wire.schedulers import Schedulers
from dispy_wire import settings
from dispy_wire.sdnotify import Notifier
from dispy_wire.settings import EX_CONFIG, ConfigError
from dispy_wire.version import version_line
from dispy_wire.tls import NODE_UNIT, ClientTLS, TLSConfigError, file_identity, plaintext_refusal

from . import account, cgroups, job_process, node_secret, report
from .availability import Rules, parse_hhmm
from .conn import NodeConfig, NodeControl, run_node
from .discovery import run_discovered
from .limits import Limits
from .worker import WorkerPolicy
from .settings import NodeSettings

logger = logging.getLogger(__name__)

DEFAULT_SCHEDULER = "127.0.0.1:9702"
#: seconds a stopping node waits for its last Heartbeat (our jobs die with us: do not wait for them) to be written
GOODBYE_TIMEOUT = 2.0
_KEYS = tuple(settings.keys(NodeSettings))
#: flags that are not settings of the config file
_NOT_SETTINGS = ("config", "jobs_as_self", "spawn_jobs", "run_as", "check_config", "print_config")


def build_parser() -> argparse.ArgumentParser:
    p = settings.ArgumentParser(
        prog="dispynode",
        allow_abbrev=False,  # a --node-secret abbreviated would stay on the command line (see node_secret.py)
        description=(
            "Compute-node daemon of dispy-shared: connects to a dispyscheduler, reports the CPUs "
            "it offers and runs each job in its own process, forked from a per-cluster zygote. "
            "Reconnects by itself; exits with status 2 if the scheduler refuses its name or secret, "
            f"{EX_CONFIG} if its own settings are refused (one line naming the key)."
        ),
        epilog=(
            "Settings: flags override the --config file, which overrides $DISPY_SCHEDULER and "
            "$DISPY_NODE_SECRET, which override the defaults. SIGTERM or SIGINT gives the jobs sent ahead and not "
            "started back to the scheduler (they run elsewhere), kills the running ones and exits; "
            "SIGUSR1 drains: running jobs finish, no new ones are taken, then the node exits with status 0."
        ),
    )
    p.add_argument("--config", metavar="FILE.toml", type=Path,
                   help="TOML file with keys " + ", ".join(_KEYS))  # fmt: skip
    p.add_argument("--version", action="version", version=version_line("dispynode"))
    p.add_argument("--check-config", action="store_true",
                   help=f"check the settings (file, flags, secret, TLS files, job accounts) and exit: 0 if good, "
                        f"{EX_CONFIG} with one line saying what is wrong otherwise")  # fmt: skip
    p.add_argument("--print-config", action="store_true",
                   help="print the effective settings (the secret redacted) and exit")  # fmt: skip
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="HOST:PORT",
                       help=f"scheduler address (default: $DISPY_SCHEDULER, else {DEFAULT_SCHEDULER}); a leader and its "
                            "standbys as HOST:PORT,HOST:PORT,...: the node follows whichever leads")  # fmt: skip
    where.add_argument("--discover", action="store_true", default=None,
                       help="find the scheduler on this network segment by UDP broadcast; only one that "
                            "proves it knows the node secret is followed")  # fmt: skip
    p.add_argument("--discovery-port", metavar="P",
                   help=f"UDP port schedulers answer --discover on (default: {DISCOVERY_PORT})")  # fmt: skip
    p.add_argument("--cpus", metavar="N",
                   help="CPUs offered (default: all); a negative N leaves -N CPUs free")  # fmt: skip
    p.add_argument("--name", help="node name the scheduler knows us by (default: the host name; logging in by certificate, its CN)")
    p.add_argument("--node-secret", metavar="SECRET",
                   help="secret shared with the scheduler (default: --secret-file, else the systemd credential "
                        f"{node_secret.CREDENTIAL!r}, else $DISPY_NODE_SECRET, else empty); on the command line "
                        "any local user can read it until the node re-executes itself without it: prefer "
                        "--secret-file")  # fmt: skip
    p.add_argument("--secret-file", metavar="PATH",
                   help="read the node secret from this file (one line), which must be the node account's "
                        "alone (mode 0600 or 0400), or the node refuses to start")  # fmt: skip
    p.add_argument("--heartbeat", metavar="SECONDS",
                   help="seconds between resource reports, the node's sign of life: the scheduler drops a node "
                        "silent for 3 of them (default: 2). The node in turn redials when the scheduler sends "
                        "nothing for 4 of the intervals it announces (its --heartbeat)")  # fmt: skip
    p.add_argument("--work-dir", metavar="DIR",
                   help="where clusters' files go, one directory each; give each node on a host its own "
                        "(default: <tmp>/dispynode-<uid>/<name>)")  # fmt: skip
    p.add_argument("--kill-grace", metavar="SECONDS",
                   help="seconds between SIGTERM and SIGKILL when a job is killed (default: 5); a job its "
                        "user cancels gets SIGINT (KeyboardInterrupt) first, and SIGTERM 3 s (at most this) later")  # fmt: skip
    p.add_argument("--scheduler-grace", metavar="SECONDS",
                   help="jobs keep running this long while the scheduler is away (restarting, or the link "
                        "is down), and are handed back when it returns; then they are killed (default: 60; "
                        "0: kill them as soon as the connection ends). Announced to the scheduler, which "
                        "waits as long for this node before it reruns or abandons its jobs")  # fmt: skip
    p.add_argument("--loglevel", metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR (default: INFO)")
    g = p.add_argument_group("TLS: how the scheduler proves itself (nothing is sent to one that does not)")
    g.add_argument("--tls-ca", metavar="FILE",
                   help="CA file the scheduler's certificate must chain to, naming the host dialed; 'system': "
                        "the system's CAs (default: $DISPY_TLS_CA)")  # fmt: skip
    g.add_argument("--tls-fingerprint", metavar="SHA256",
                   help="the scheduler certificate's SHA-256 fingerprint, instead of (or with) a CA "
                        "(default: $DISPY_TLS_FINGERPRINT)")  # fmt: skip
    g.add_argument("--tls-cert", "--certfile", dest="tls_cert", metavar="FILE",
                   help="this node's certificate, for a scheduler that asks for one (mutual TLS); with no node "
                        "secret the node logs in by it (OU=dispy-node; its CN is the node name unless --name)")  # fmt: skip
    g.add_argument("--tls-key", "--keyfile", dest="tls_key", metavar="FILE", help="its key (default: in --tls-cert)")
    g.add_argument("--insecure-plaintext", action="store_true", default=None,
                   help="talk plaintext to a scheduler off loopback: anyone on the path reads the jobs, "
                        "and any host that takes over the address can run code here")  # fmt: skip
    g = p.add_argument_group("jobs: who runs them and their limits (clusters and jobs may ask for less)")
    g.add_argument("--job-uids", metavar="FIRST-LAST",
                   help="as root (the default there): each cluster runs as a uid of its own from this range, so "
                        "jobs of different clusters cannot touch one another; uids no account, container or "
                        f"service on the host uses (default: {account.DEFAULT_JOB_UIDS})")  # fmt: skip
    g.add_argument("--shared-run-as", metavar="USER",
                   help="as root, instead of --job-uids: every cluster's zygote and jobs run as this one "
                        "account (never root), so users' jobs CAN reach one another (the node warns so)")  # fmt: skip
    g.add_argument("--run-as", help=argparse.SUPPRESS)  # refused with the reason: see load_config
    g.add_argument("--jobs-as-self", action="store_true",
                   help="run jobs as the node's own account, even root: NOT isolated from the node; "
                        "for a JobCluster's local node and test machines")  # fmt: skip
    g.add_argument("--max-memory", metavar="SIZE", help="address space per job, e.g. 512M or 2G (RLIMIT_AS)")
    g.add_argument("--max-cpu-time", metavar="SECONDS", help="CPU time per job (RLIMIT_CPU)")
    g.add_argument("--max-job-time", metavar="SECONDS", help="wall-clock time per job")
    g.add_argument("--max-open-files", metavar="N", help="open files per job process (RLIMIT_NOFILE)")
    g.add_argument("--spawn-jobs", action="store_true",
                   help="start each job as a new interpreter instead of forking the cluster's zygote "
                        "(for hosts where fork is unsafe; costs tens of ms per job, and setup runs per job)")  # fmt: skip
    g.add_argument("--isolation", choices=isolation.MODES,
                   help="how jobs of clusters that do not choose run: 'fork', a process per job (default), or "
                        "'worker', processes reused for many jobs of one cluster (docs/isolation.md)")  # fmt: skip
    g.add_argument("--worker-jobs", metavar="N",
                   help=f"a reused worker is replaced after N jobs (default: {WorkerPolicy().max_jobs})")  # fmt: skip
    g.add_argument("--worker-memory-growth", metavar="SIZE",
                   help="a reused worker is replaced once its peak RSS grew by SIZE (default: 256M)")  # fmt: skip
    g.add_argument("--max-processes", metavar="N",
                   help="processes at once in a job's tree (cgroup pids.max; needs cgroups)")  # fmt: skip
    g.add_argument("--max-output", metavar="SIZE",
                   help="bytes kept of each of a job's stdout and stderr; the rest is cut, with a note "
                        "(default: 4M, at most 12M)")  # fmt: skip
    g.add_argument("--setup-timeout", metavar="SECONDS",
                   help="time a cluster's setup may take before that cluster fails here (default: 60)")  # fmt: skip
    g = p.add_argument_group("when the node offers its CPUs")
    g.add_argument("--yield-load", metavar="F",
                   help="offer fewer CPUs while the load not caused by our jobs stays above F CPUs")  # fmt: skip
    g.add_argument("--yield-window", metavar="SECONDS",
                   help="how long that load must last before the node yields, or returns (default: 60)")  # fmt: skip
    g.add_argument("--service-start", metavar="HH:MM", help="daily: start offering CPUs")
    g.add_argument("--service-stop", metavar="HH:MM", help="daily: stop taking jobs; running ones finish")
    g.add_argument("--service-end", metavar="HH:MM",
                   help="daily: give back the jobs sent ahead and not started (they run elsewhere) and kill "
                        "the running ones (they end Abandoned, saying why; reentrant ones run again elsewhere)")  # fmt: skip
    g.add_argument("--serve", metavar="N", help="exit (status 0) after serving N clusters")
    return p


def load_config(args: argparse.Namespace, fail: Callable[[str], NoReturn]) -> tuple[NodeConfig, str, int | None]:
    """Merges flags, file, environment and defaults.

    Returns:
        The config, the log level, and the UDP port to discover the
        scheduler on (None: dial the configured scheduler; host and port
        in the config are then still empty).

    Args:
        fail: called with a message for a bad setting (`parser.error`).
    """
    file: dict[str, Any] = {}
    if args.config is not None:
        try:
            file = tomllib.loads(args.config.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            fail(f"cannot read config file {args.config}: {exc}")
        if "run_as" in file:
            _no_run_as(fail)
    if args.run_as is not None:
        _no_run_as(fail)
    try:
        file = _checked(file, f"config file {args.config}", strict=True)
        given = {k: v for k, v in vars(args).items() if v is not None and k not in _NOT_SETTINGS}
        flags = _checked(given, "command line", strict=False)
    except ConfigError as exc:
        fail(str(exc))

    def pick(key: str, env: str | None, default: Any) -> Any:
        if key in flags:
            return flags[key]
        if key in file:
            return file[key]
        if env and env in os.environ:
            return os.environ[env]
        return default

    def opt(key: str, convert: Callable[[Any], _T]) -> _T | None:
        """The setting `key` (None if not given), converted, or a ConfigError naming it."""
        value = pick(key, None, None)
        try:
            return None if value is None else convert(value)
        except (TypeError, ValueError) as exc:
            fail(f"{key}: {exc}")

    discovery_port = None
    standbys: tuple[tuple[str, int], ...] = ()
    if pick("discover", None, False):
        host, port = "", "0"
        discovery_port = pick("discovery_port", None, DISCOVERY_PORT)
        if not isinstance(discovery_port, int) or not 0 < discovery_port < 65536:
            fail(f"discovery port {discovery_port!r} is not a port number")
    else:
        scheduler = str(pick("scheduler", "DISPY_SCHEDULER", DEFAULT_SCHEDULER))
        if "," in scheduler:  # a leader and its standbys, in any order: the node finds the leader
            try:
                (host, first_port), *others = Schedulers(scheduler, 0).addresses
            except ValueError as exc:
                fail(str(exc))
            if first_port == 0 or any(p == 0 for _, p in others):
                fail(f"scheduler address {scheduler!r}: give each as HOST:PORT")
            port, standbys = str(first_port), tuple(others)
        else:
            host, sep, port = scheduler.rpartition(":")
            host = host.strip("[]")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                fail(f"scheduler address {scheduler!r} is not HOST:PORT")
    try:
        cpus = int(pick("cpus", None, 0))
        heartbeat = float(pick("heartbeat", None, 2.0))
        kill_grace = float(pick("kill_grace", None, 5.0))
        scheduler_grace = float(pick("scheduler_grace", None, 60.0))
    except (TypeError, ValueError) as exc:
        fail(f"bad number: {exc}")
    total = report.total_cpus()
    cpus = total if cpus == 0 else max(1, total + cpus) if cpus < 0 else cpus
    if not (heartbeat > 0 and kill_grace >= 0 and scheduler_grace >= 0):  # so written, NaN is refused too
        fail("--heartbeat must be positive and --kill-grace and --scheduler-grace not negative")
    secret = node_secret.choose(args, file, fail)
    tls, insecure = _tls(pick, fail)
    name = str(pick("name", None, _certificate_name(tls, secret) or socket.gethostname()))
    if not name:
        fail("the node name must not be empty")
    default_dir = Path(tempfile.gettempdir()) / f"dispynode-{os.getuid()}" / re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    work_dir = Path(pick("work_dir", None, default_dir)).expanduser().absolute()
    loglevel = str(pick("loglevel", None, "INFO")).upper()
    if not isinstance(logging.getLevelName(loglevel), int):
        fail(f"unknown log level {loglevel!r}")
    try:
        shared = pick("shared_run_as", None, None)
        run_as = account.resolve(shared)
        accounts = account.pool_for(pick("job_uids", None, None), shared, args.jobs_as_self)
        caps = Limits(
            memory=opt("max_memory", parse_size),
            cpu_time=opt("max_cpu_time", _positive_int),
            wall=opt("max_job_time", _positive),
            open_files=opt("max_open_files", _positive_int),
            processes=opt("max_processes", _positive_int),
        )
        max_output = opt("max_output", parse_size) or parse_size("4M")
        if max_output > job_process.MAX_OUTPUT:
            raise ValueError(
                f"--max-output is at most {format_size(job_process.MAX_OUTPUT)}: "
                "a job's result, stdout and stderr travel in one message"
            )
        setup_timeout = opt("setup_timeout", _positive) or 60.0
        rules = Rules(
            cpus,
            opt("service_start", parse_hhmm),
            opt("service_stop", parse_hhmm),
            opt("service_end", parse_hhmm),
            opt("yield_load", _positive),
            opt("yield_window", _positive) or 60.0,
        )
        serve = opt("serve", _positive_int)
        workers = WorkerPolicy(
            opt("isolation", isolation.check) or isolation.FORK,
            opt("worker_jobs", _positive_int) or WorkerPolicy().max_jobs,
            opt("worker_memory_growth", parse_size) or parse_size("256M"),
        )
    except (TypeError, ValueError) as exc:
        fail(str(exc))
    refusal = plaintext_refusal(host, tls is not None, insecure) if discovery_port is None else None
    if refusal is not None:
        fail(f"refusing to connect to the scheduler: {refusal}; give --tls-ca (or --tls-fingerprint), "
             "or --insecure-plaintext to take that risk")  # fmt: skip
    config = NodeConfig(
        host, int(port), cpus, name, secret, heartbeat, work_dir, kill_grace,
        run_as, caps, max_output, setup_timeout, rules, serve, accounts=accounts,
        tls=tls, insecure_plaintext=insecure, scheduler_grace=scheduler_grace, workers=workers,
        standbys=standbys,
    )  # fmt: skip
    return config, loglevel, discovery_port


def _no_run_as(fail: Callable[[str], NoReturn]) -> NoReturn:
    fail(
        "--run-as is gone: a root node now runs each cluster as a uid of its own (--job-uids, on by "
        "default); --shared-run-as USER runs every cluster as one account, whose jobs can reach one another"
    )


def _checked(values: dict[str, Any], where: str, strict: bool) -> dict[str, Any]:
    """The values given at one level (file or flags), checked against `NodeSettings` and converted.

    Raises:
        ConfigError: naming the key and what it must be.
    """
    if isinstance(values.get("loglevel"), str):
        values = {**values, "loglevel": values["loglevel"].upper()}
    checked = settings.check(values, NodeSettings, where, strict=strict)
    return {key: getattr(checked, key) for key in values}


def _tls(pick: Callable[[str, str | None, Any], Any], fail: Callable[[str], NoReturn]) -> tuple[ClientTLS | None, bool]:
    """The TLS settings (None: plaintext) and whether plaintext off loopback was allowed."""
    ca = pick("tls_ca", "DISPY_TLS_CA", None) or None
    fingerprint = pick("tls_fingerprint", "DISPY_TLS_FINGERPRINT", None) or None
    cert, key = pick("tls_cert", None, None), pick("tls_key", None, None)
    insecure = bool(pick("insecure_plaintext", None, False))
    if ca is None and fingerprint is None and cert is None:
        return None, insecure
    tls = ClientTLS(
        None if ca is None else str(ca), None if fingerprint is None else str(fingerprint),
        None if cert is None else str(cert), None if key is None else str(key),
    )  # fmt: skip
    try:
        tls.context()  # a bad file stops the node now, not at every redial
    except TLSConfigError as exc:
        fail(str(exc))
    return tls, insecure


def _certificate_name(tls: ClientTLS | None, secret: str) -> str | None:
    """The name a node logging in by certificate defaults to: the certificate's CN (the only one it can use)."""
    if secret or tls is None or tls.cert is None:
        return None
    identity = file_identity(tls.cert)  # readable: `_tls` loaded it
    return identity.name or None if NODE_UNIT in identity.units else None


_T = TypeVar("_T")


def _positive(value: Any) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError(f"{value!r} is not a positive number")
    return number


def _positive_int(value: Any) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError(f"{value!r} is not a positive integer")
    return number


def _usable_account(config: NodeConfig, as_self: bool) -> NodeConfig:
    """Settles the account jobs run as, and checks that it can run this Python.

    As root, jobs run as uids of `--job-uids` (or `--shared-run-as`). They cannot
    run an interpreter that sits in a private directory (pyenv under /root,
    say): the node then refuses to start rather than run strangers' code as
    root. `--jobs-as-self` runs them as the node's own account instead, not
    isolated from it: for a JobCluster's local node (whose jobs are its own
    user's code anyway) and for test machines.

    Raises:
        PermissionError: the account cannot run jobs.
    """
    if as_self:
        me = account.myself()
        if me.uid == 0:
            logger.warning("--jobs-as-self: jobs run as root, NOT isolated from this node")
        return dataclasses.replace(config, account=me)
    run_as = config.accounts.sample() if config.accounts else config.account or account.resolve(None)
    problem = account.cannot_run_python(run_as)
    if problem is not None:
        raise PermissionError(
            f"{problem}; install dispy-shared where that account can read it, choose other --job-uids "
            "(or --shared-run-as), or pass --jobs-as-self to run jobs as this node's own account (not isolated)"
        )
    return dataclasses.replace(config, account=run_as)


def _make_work_dir(path: Path, run_as: account.Account) -> None:
    """Creates the work directory, private to us: jobs' files are the users' data.

    When jobs run as another account it is 0711: that account may pass through
    to its clusters' directories (which it owns) but not list them. Every
    directory above it must let that account through too.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_uid != os.getuid():
        raise PermissionError(f"work directory {path} belongs to another user")
    path.chmod(0o700 if run_as.is_self else 0o711)
    if not run_as.is_self:
        for parent in path.parents:
            if not parent.stat().st_mode & 0o001:
                raise PermissionError(f"{parent} does not let jobs' account {run_as.name} through to {path}")


async def _serve(config: NodeConfig, discovery_port: int | None, offer: str) -> int:
    """Runs the node until SIGTERM/SIGINT, a drain or its last cluster (exit 0), or a fatal refusal (exit 2).

    `offer` says what it offers to whom, for systemd's status line.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    notifier = Notifier.from_env()
    control = NodeControl(config, on_status=notifier.status)

    def drain() -> None:
        notifier.stopping("draining: running jobs finish, no new ones")
        control.drain()

    loop.add_signal_handler(signal.SIGUSR1, drain)
    if discovery_port is None:
        node = asyncio.create_task(run_node(config, control))
    else:
        node = asyncio.create_task(run_discovered(config, control, discovery_port))
    notifier.ready(offer)
    watchdog = asyncio.create_task(notifier.keep_alive())
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({node, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if node.done():
            return node.result()
        logger.info("stopping: giving back the jobs not started, killing the running ones")
        notifier.stopping("stopping: giving back the jobs not started, killing the running ones")
        control.leave()
        try:  # a moment for the scheduler to hear it (not connected: nobody to tell)
            await asyncio.wait_for(control.said_goodbye.wait(), GOODBYE_TIMEOUT)
        except TimeoutError:
            pass
        node.cancel()  # the session's cleanup kills every job and zygote
        await asyncio.gather(node, return_exceptions=True)
        return 0
    finally:
        watchdog.cancel()


def _config_error(message: str) -> NoReturn:
    raise ConfigError(message)


def describe(config: NodeConfig, loglevel: str, discovery_port: int | None) -> str:
    """The effective settings, the secret redacted (`--print-config`)."""
    shown = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    shown["node_secret"] = settings.REDACTED if config.node_secret else ""
    shown.update(loglevel=loglevel, discovery_port=discovery_port)
    return "\n".join(f"{key} = {value!r}" for key, value in shown.items() if key in _SHOWN)


#: what --print-config lists of a NodeConfig
_SHOWN = (
    "host", "port", "discovery_port", "cpus", "name", "node_secret", "heartbeat", "work_dir", "kill_grace",
    "scheduler_grace", "account", "accounts", "caps", "max_output", "setup_timeout", "rules", "serve", "tls",
    "insecure_plaintext", "loglevel",
)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    try:
        args = build_parser().parse_args(argv)
        node_secret.keep_from_jobs(args, argv_given=argv is not None)  # may re-execute this process
        config, loglevel, discovery_port = load_config(args, _config_error)
    except ConfigError as exc:
        print(f"dispynode: {exc}", file=sys.stderr)
        sys.exit(EX_CONFIG)
    if args.print_config:
        print(describe(config, loglevel, discovery_port))
        sys.exit(0)
    if args.check_config:
        try:
            checked = _usable_account(config, as_self=args.jobs_as_self)
        except OSError as exc:
            print(f"dispynode: cannot run jobs: {exc}", file=sys.stderr)
            sys.exit(EX_CONFIG)
        runs_as = checked.account.name if checked.account else "?"
        if checked.accounts is not None:
            runs_as = f"uids {checked.accounts.first}-{checked.accounts.last}"
        print(f"dispynode: configuration is valid (node {config.name!r}, {config.cpus} cpus, jobs run as {runs_as})")
        sys.exit(0)
    logging.basicConfig(level=loglevel, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = _usable_account(config, as_self=args.jobs_as_self)
        if config.accounts is not None:  # what clusters of a node that died left: gone before a uid is reused
            config.accounts.reclaim()
        _make_work_dir(config.work_dir, config.account or account.resolve(None))
    except OSError as exc:
        logger.error("cannot run jobs: %s", exc)
        sys.exit(2)
    config = _with_cgroups(config)
    if args.spawn_jobs:
        config = dataclasses.replace(config, spawn=True)
    scheduler = config.scheduler if discovery_port is None else f"the scheduler found on UDP port {discovery_port}"
    offer = f"node {config.name!r} offers {config.cpus} cpus to {scheduler}"
    if config.accounts is not None:
        runs_as = f"uids {config.accounts.first}-{config.accounts.last}, one per cluster"
    else:
        runs_as = config.account.name if config.account else "us"
    logger.info("%s; %s; work dir %s; jobs run as %s", version_line("dispynode"), offer, config.work_dir, runs_as)
    if config.accounts is None and not args.jobs_as_self:  # --jobs-as-self warned already, as root
        logger.warning(
            "every cluster's jobs run as the one account %s: users' jobs can signal, trace and read one "
            "another%s", runs_as, " (run the node as root for a uid per cluster)" if os.getuid() else ""
        )  # fmt: skip
    # uvloop's subprocess_exec refuses user= and group= (ValueError): zygotes that run as other
    # accounts than the node's are started from asyncio's own loop
    as_others = config.accounts is not None or (config.account is not None and not config.account.is_self)
    try:
        with asyncio.Runner(loop_factory=None if as_others else event_loop_factory()) as runner:
            code = runner.run(_serve(config, discovery_port, offer))
    finally:
        if config.cgroups is not None:
            cgroups.release(config.cgroups)
        leaving()
    sys.exit(code)


def _with_cgroups(config: NodeConfig) -> NodeConfig:
    """Control groups for jobs' memory and process limits, where the host allows them."""
    groups, why = cgroups.prepare()
    if groups is None:
        level = logging.WARNING if config.caps.processes else logging.INFO
        logger.log(level, "per-job cgroups unavailable (%s): memory limits apply per process only", why)
        if config.caps.processes:
            logger.warning("--max-processes has no effect without cgroups")
        return config
    logger.info("per-job cgroups under %s", ", ".join(groups.parents.values()))
    return dataclasses.replace(config, cgroups=groups)


if __name__ == "__main__":
    main()
