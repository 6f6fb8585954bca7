"""The scheduler's configuration: command line over TOML file over defaults.

`SchedConfig` is the schema: every option with its type and bounds, checked
by msgspec (`dispy_wire.settings.check`) against the TOML file strictly and
against the flags' strings by conversion, so a bad value or an unknown key
is one line naming it (exit status 78). `UserTable` is the same for each
`[users.NAME]` table of the users file. What needs more than a type
(verifiers, limits written as sizes or "unlimited", TLS files that must
load, unsafe combinations) is checked after, in `config_from_namespace`.
"""

from __future__ import annotations

import argparse
import os
import stat
import socket
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from dispy_wire.discovery import DISCOVERY_PORT
from dispy_wire.framing import DEFAULT_MAX_SIZE
from dispy_wire.handshake import Role
from dispy_wire.limits import parse_size
from dispy_wire.liveness import DEFAULT_INTERVAL, MAX_INTERVAL, MIN_INTERVAL, MISSES
from dispy_wire import settings
from dispy_wire.settings import EX_CONFIG, SECONDS, ConfigError as ConfigError
from dispy_wire.version import version_line
from dispy_wire.verifier import Verifier, looks_like_verifier
from dispy_wire.tls import ServerTLS, TLSConfigError, is_loopback, plaintext_refusal

from .core.scheduler import CoreConfig
from .core.state import Limits

DEFAULT_PORT = 9702

#: the limits a `[users.NAME]` table may set (`UserTable` has a field for each)
LIMIT_KEYS = tuple(f.name for f in fields(Limits))
#: limits written as sizes (`512M`); `priority_max` may be negative; the rest are counts
SIZE_LIMITS = ("max_queued_bytes", "max_held_bytes")
#: the value that lifts a limit
UNLIMITED = "unlimited"


Seconds = Annotated[float, msgspec.Meta(ge=0, extra=SECONDS)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
#: a limit: a non-negative integer (sizes already in bytes), None: unlimited
LimitValue = Annotated[int, msgspec.Meta(ge=0)] | None


@dataclass(frozen=True, slots=True)
class UserEntry:
    #: None: the user logs in by certificate only
    verifier: Verifier | None
    share: float = 1.0
    #: the limits this user's table sets (None: unlimited); the rest are the scheduler's defaults
    limits: dict[str, int | None] = field(default_factory=dict)
    #: may log in by a client certificate naming it (CN=NAME, OU=dispy-user) instead of a secret
    certificate: bool = False


class UserTable(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A `[users.NAME]` table of the users file, as written (limits checked by `limit_value`)."""

    verifier: str | None = None
    certificate: bool = False
    share: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    max_cpus: int | str | UnsetType = UNSET
    max_queued_jobs: int | str | UnsetType = UNSET
    priority_max: int | str | UnsetType = UNSET
    max_connections: int | str | UnsetType = UNSET
    max_clusters: int | str | UnsetType = UNSET
    max_queued_bytes: int | str | UnsetType = UNSET
    max_held_bytes: int | str | UnsetType = UNSET


assert set(LIMIT_KEYS) <= set(UserTable.__struct_fields__), "a limit of core.state.Limits missing from UserTable"


class SchedConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Every setting of the scheduler: the schema the config file and the flags are checked against.

    The fields in `DERIVED` are worked out at start (the users file read,
    secrets turned into verifiers); no file or flag sets them.
    """

    host: str = "127.0.0.1"
    port: Port = DEFAULT_PORT
    discovery_port: Port | None = None  # None: DISCOVERY_PORT unless listening on loopback; 0: off
    policy: str = "fair"
    secret: str | None = None  # plaintext, for every user name: turned into a verifier in memory at start
    users_file: str | None = None
    node_secret: str = ""  # plaintext (flag, $DISPY_NODE_SECRET): turned into a verifier in memory at start
    node_verifier: str | None = None  # what `dispyadmin node-secret` prints for the scheduler
    state_dir: str | None = None
    max_message_size: Annotated[int, msgspec.Meta(ge=1024)] = DEFAULT_MAX_SIZE
    handshake_timeout: Annotated[float, msgspec.Meta(gt=0, extra=SECONDS)] = 10.0
    #: seconds between Pings to an idle client or node (announced in Welcome): a peer that hears nothing
    #: for four of them takes the scheduler for gone and reconnects
    heartbeat: Annotated[float, msgspec.Meta(ge=MIN_INTERVAL, le=MAX_INTERVAL, extra=SECONDS)] = DEFAULT_INTERVAL
    #: connections still logging in, in all and from one address; more are refused
    max_unauthenticated: Positive = 256
    max_unauthenticated_per_address: Positive = 32
    usage_half_life: Seconds = 3600.0  # 0: usage never decays
    status_log_interval: Annotated[float, msgspec.Meta(gt=0, extra=SECONDS)] = 60.0
    #: queued jobs a close or another bulk cancel ends per loop turn, everyone else served in between
    #: (core/scheduler.py, Cancelling): at 2,000, turns of 0.1 to 0.2 s on a busy 2-core machine
    close_slice: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 2000
    #: every user's limits unless its [users.NAME] table says otherwise (None: unlimited)
    user_max_connections: LimitValue = 64
    user_max_clusters: LimitValue = 32
    user_max_queued_bytes: LimitValue = 512 << 20
    user_max_held_bytes: LimitValue = 512 << 20
    #: a client sees other users only as totals (`--show-others` turns it off)
    private_data: bool = True
    #: seconds a cluster's program may stay away (dispy's zombie_interval): then the cluster is released,
    #: its uncollected results dropped and its jobs cancelled; 0: forever
    result_retention: Seconds = 3600.0
    journal: bool = True  # keep accepted jobs, held results and usage in the state dir's journal
    journal_sync: Literal["full", "normal"] = "full"  # full: on disk before acknowledging; normal: survives a kill
    adopt_within: Seconds = 30.0  # after a restart, seconds nodes have to report jobs that were running
    #: jobs per CPU a node is sent beyond its CPUs, queued there for the next free CPU (core/scheduler.py, Prefetch)
    prefetch: Annotated[int, msgspec.Meta(ge=0, le=64)] = 1
    #: the most jobs per CPU sent ahead where jobs are short (core/window.py); not above `prefetch`: always `prefetch`
    prefetch_max: Annotated[int, msgspec.Meta(ge=0, le=256)] = 32
    #: seconds of queued work per CPU a node is sent ahead, in jobs as long as they run lately (core/window.py)
    prefetch_target: Seconds = 0.005
    #: how long the state database keeps each job's accounting record; 0: forever
    accounting_retention: Seconds = 90 * 86400.0
    # -- PostgreSQL state and standby schedulers (dispy_sched/pg_store.py, leadership.py)
    #: postgresql://...: the state in PostgreSQL, shared by every scheduler given the same URL (one leads,
    #: the others stand by); None: the SQLite journal in state_dir
    state: str | None = None
    #: seconds a silent leader keeps leading before a standby takes over
    lease: Annotated[float, msgspec.Meta(ge=0.5, le=600, extra=SECONDS)] = 3.0
    advertise: str | None = None  # host:port peers are sent to while this scheduler leads (default: where it listens)
    loglevel: LogLevel = "INFO"
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca: str | None = None  # signs the certificates clients and nodes may (or must) present
    tls_require_client_cert: bool = False
    insecure_plaintext: bool = False
    # -- HTTP: the JSON API, the dashboard and /metrics (dispy_sched/httpd.py)
    http_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] | None = None  # None: no HTTP server; 0 picks a free port
    http_host: str = "127.0.0.1"
    admin_token_file: str | None = None  # None: admin-token in the state dir, made (mode 600) at the first start
    name: str = msgspec.field(default_factory=socket.gethostname)
    users: dict[str, UserEntry] = msgspec.field(default_factory=dict)
    _any_user: Verifier | None = None
    _node: Verifier | None = None

    def prepare_verifiers(self) -> None:
        """Turns the plaintext secrets this config was given into verifiers, once.

        Raises:
            ConfigError: a node_verifier that does not parse.
        """
        if self.node_verifier is not None:
            try:
                self._node = Verifier.parse(self.node_verifier)
            except ValueError as exc:
                raise ConfigError(f"node_verifier: {exc}; make one with `dispyadmin node-secret`") from None
        elif self._node is None:
            self._node = Verifier.from_secret(self.node_secret)
        if not self.users and self._any_user is None:
            self._any_user = Verifier.from_secret(self.secret if self.secret is not None else "")

    def verifier_for(self, role: Role, name: str) -> Verifier | None:
        """The verifier `name` must prove its secret against, or None if it may not connect at all."""
        if self._node is None or (not self.users and self._any_user is None):
            self.prepare_verifiers()
        if role is Role.NODE:
            return self._node
        if self.users:
            entry = self.users.get(name)
            return entry.verifier if entry else None
        return self._any_user

    def certificate_allowed(self, role: Role, name: str) -> bool:
        """Whether `name` may log in by a client certificate (signed by `tls_ca`) instead of a secret.

        Any node certificate may, as any node knowing the node secret may; a
        user only if its users-file table says `certificate = true`, or any
        user when there is no users file (as `--secret` lets every name in).
        """
        if role is Role.NODE or not self.users:
            return True
        entry = self.users.get(name)
        return entry is not None and entry.certificate

    def server_tls(self) -> ServerTLS | None:
        """The listener's TLS settings; None: plaintext."""
        if self.tls_cert is None:
            return None
        return ServerTLS(self.tls_cert, self.tls_key, self.tls_ca, self.tls_require_client_cert)

    def core_config(self, *, persist: bool, accounting: bool) -> CoreConfig:
        """The scheduling core's settings: dispyscheduler's, and a JobCluster's embedded scheduler's alike."""
        return CoreConfig(
            shares=self.shares(), limits=self.limits(), default_limits=self.default_limits(),
            private_data=self.private_data, result_retention=self.result_retention,
            usage_half_life=self.usage_half_life, close_slice=self.close_slice,
            persist=persist, accounting=accounting,
            prefetch=self.prefetch, prefetch_max=self.prefetch_max, prefetch_target=self.prefetch_target,
        )  # fmt: skip

    def shares(self) -> dict[str, float]:
        return {name: entry.share for name, entry in self.users.items()}

    def default_limits(self) -> Limits:
        """The limits of a user its table does not change (and of any user under `--secret`)."""
        return Limits(
            max_connections=self.user_max_connections,
            max_clusters=self.user_max_clusters,
            max_queued_bytes=self.user_max_queued_bytes,
            max_held_bytes=self.user_max_held_bytes,
        )

    def limits(self) -> dict[str, Limits]:
        """The limits of each user in the users file: its table's over the defaults."""
        return {name: replace(self.default_limits(), **entry.limits) for name, entry in self.users.items()}

    def limits_for(self, name: str) -> Limits:
        entry = self.users.get(name)
        return replace(self.default_limits(), **entry.limits) if entry else self.default_limits()


#: fields no file or flag sets: worked out at start
DERIVED = ("users",)
#: settings `--print-config` does not show
SECRETS = ("secret", "node_secret", "node_verifier")
#: flags that are not settings
NOT_SETTINGS = ("config", "check_config", "print_config")


def load_users(path: str) -> dict[str, UserEntry]:
    """Reads `[users.NAME]` tables: `verifier`, `certificate`, `share` (default 1) and optional limits.

    `verifier` is a SCRAM-SHA-256 verifier as `dispyadmin user add` writes it,
    never the secret itself; a `secret = "..."` line is refused, saying how to
    convert. `certificate = true` lets the user log in by a client certificate
    naming it instead (the table then needs no verifier). The file must not be readable by group or others.
    Limits (`LIMIT_KEYS`; absent: the scheduler's default, which is none for
    `max_cpus`, `max_queued_jobs` and `priority_max`): non-negative integers,
    sizes such as `512M` for `SIZE_LIMITS`, any integer for `priority_max`,
    or "unlimited". See README.md and docs/security.md.

    Raises:
        ConfigError: an unreadable or readable-by-others file, a table without
            a verifier, a bad value, or a key it does not know (naming it and
            the known ones).
    """
    try:
        with open(path, "rb") as f:
            check_private(path, os.fstat(f.fileno()).st_mode)
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read users file {path}: {exc}") from None
    tables = data.get("users", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"users file {path}: users must be tables [users.NAME]")
    users: dict[str, UserEntry] = {}
    for name, table in tables.items():
        where = f"users file {path}: [users.{name}]"
        if isinstance(table, dict) and "secret" in table:
            raise ConfigError(
                f"{where} holds a plaintext secret; the scheduler stores only verifiers. Convert it with "
                f"`dispyadmin user add {name} --users-file {path} --replace` (prints a new secret for the user), "
                f"or `dispyadmin verifier` (reads the old secret on stdin, prints verifier = \"...\" for this table)"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{where} is not a table")
        entry = settings.check(table, UserTable, where, strict=True)
        verifier = _verifier(entry.verifier, where, entry.certificate)
        users[name] = UserEntry(verifier, float(entry.share), _limits(entry, where), entry.certificate)
    if not users:
        raise ConfigError(f"users file {path} defines no [users.NAME] table")
    return users


def _verifier(text: str | None, where: str, certificate: bool) -> Verifier | None:
    """The table's verifier; None for a user who logs in by certificate only."""
    if text is None:
        if certificate:
            return None
        raise ConfigError(
            f"{where} needs verifier = \"SCRAM-SHA-256$...\" (dispyadmin user add writes it), "
            "or certificate = true to log in by client certificate only"
        )
    try:
        return Verifier.parse(text)
    except ValueError as exc:
        raise ConfigError(f"{where} verifier: {exc}") from None


def check_private(path: str, mode: int) -> None:
    """Refuses a secrets file that group or others may read or write.

    Raises:
        ConfigError: naming the mode and the fix.
    """
    if mode & 0o077:
        raise ConfigError(
            f"{path} has mode {stat.filemode(mode)} ({mode & 0o777:o}): group or others may read or change it; "
            f"run `chmod 600 {path}` (and keep it owned by the scheduler's user)"
        )


def _limits(table: UserTable, where: str) -> dict[str, int | None]:
    given = {name: getattr(table, name) for name in LIMIT_KEYS}
    return {name: limit_value(name, value, f"{where}:") for name, value in given.items() if value is not UNSET}


def limit_value(name: str, value: object, where: str, shown: str | None = None) -> int | None:
    """A limit as written (in a users table, the config file or a flag): its value, None if unlimited.

    Raises:
        ConfigError: naming `where`, the key and what it must be.
    """
    if value == UNLIMITED:
        return None
    if name in SIZE_LIMITS and isinstance(value, str):
        try:
            return parse_size(value)
        except ValueError as exc:
            raise ConfigError(f"{where} {shown or name}: {exc}") from None
    if isinstance(value, str):
        try:
            value = int(value)  # from the command line
        except ValueError:
            pass
    if not isinstance(value, int) or isinstance(value, bool) or (value < 0 and name != "priority_max"):
        kind = "an integer" if name == "priority_max" else "a non-negative integer"
        if name in SIZE_LIMITS:
            kind = "a size in bytes (such as 512M or 2G)"
        raise ConfigError(f"{where} {shown or name} must be {kind} or \"{UNLIMITED}\", not {value!r}")
    return value


def default_state_dir() -> str:
    """`$STATE_DIRECTORY` under systemd, else a per-user directory."""
    if os.environ.get("STATE_DIRECTORY"):
        return os.environ["STATE_DIRECTORY"].split(":")[0]
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return os.path.join(base, "dispyscheduler")


def build_parser() -> argparse.ArgumentParser:
    p = settings.ArgumentParser(
        prog="dispyscheduler",
        description="Shared scheduler of a dispy-shared cluster: clients and nodes both connect to it.",
        epilog="`dispyscheduler tls init DIR` makes a CA and the certificates for TLS "
        f"(see `dispyscheduler tls init --help`). Options in seconds (S) take durations too: 90s, 30m, 1h, 7d. "
        f"A refused configuration exits with status {EX_CONFIG}, one line naming the key.",
    )
    p.add_argument("--config", metavar="FILE", help="TOML file with any of the options below (flags override it)")
    p.add_argument("--version", action="version", version=version_line("dispyscheduler"))
    p.add_argument(
        "--check-config", action="store_true",
        help=f"check the configuration (file, flags, users file, TLS files, policy) and exit: 0 if it is good, "
        f"{EX_CONFIG} with one line saying what is wrong otherwise",
    )  # fmt: skip
    p.add_argument(
        "--print-config", action="store_true", help="print the effective settings (secrets redacted) and exit"
    )
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", help=f"port for clients and nodes; 0 picks a free one (default {DEFAULT_PORT})")
    p.add_argument(
        "--discovery-port",
        metavar="P",
        help="UDP port where nodes started with --discover find this scheduler; 0: off "
        f"(default {DISCOVERY_PORT}, off when listening on loopback)",
    )
    p.add_argument(
        "--policy",
        help="scheduling policy: fair (default), fifo, fair_cluster, fcfs_cluster, an entry point of group "
        "dispy_sched.policies, or package.module:Class",
    )
    auth = p.add_mutually_exclusive_group()
    auth.add_argument(
        "--secret", help="one secret for every user name (plaintext: kept as a verifier in memory; prefer --users-file)"
    )
    auth.add_argument(
        "--users-file",
        metavar="FILE",
        help="TOML with [users.NAME] verifier = ... (written by `dispyadmin user add`), share = N, and optional "
        f"limits {', '.join(LIMIT_KEYS)}; mode 600",
    )
    nodes = p.add_mutually_exclusive_group()
    nodes.add_argument(
        "--node-verifier",
        metavar="V",
        help="verifier of the secret nodes must prove (`dispyadmin node-secret` prints both)",
    )
    nodes.add_argument(
        "--node-secret",
        help="plaintext node secret (default $DISPY_NODE_SECRET, else empty): kept as a verifier in memory, "
        "with a warning; prefer --node-verifier",
    )
    p.add_argument("--state-dir", metavar="DIR", help="where the scheduler keeps its state")
    p.add_argument(
        "--no-journal",
        dest="journal",
        action="store_false",
        default=None,
        help="keep nothing across restarts (no journal in the state dir): accepted jobs, held results, "
        "usage history and the drains, CPU caps and shares set through the HTTP API are lost when the scheduler "
        "stops (accounting records are still kept)",
    )
    p.add_argument(
        "--journal-sync",
        help="full (default): each turn's journal commit is on disk before its acknowledgements leave; "
        "normal: faster, survives the scheduler being killed but not the machine losing power",
    )
    # -- PostgreSQL state and standby schedulers
    p.add_argument(
        "--state",
        metavar="URL",
        help="postgresql://USER@HOST/DB (or a libpq connection string): keep the state in PostgreSQL instead of "
        "the SQLite journal (and the accounting records with it: dispyadmin history --state URL); every "
        "scheduler given the same URL shares it: one leads, the others stand by and take over when it dies "
        "(docs/standby.md)",
    )
    p.add_argument("--lease", metavar="S", help="seconds a silent leader keeps leading before a standby takes over (3)")
    p.add_argument(
        "--advertise", metavar="HOST:PORT", help="the address peers are sent to while this scheduler leads (default: where it listens)"
    )
    p.add_argument(
        "--adopt-within",
        metavar="S",
        help="after a restart, seconds nodes have to report the jobs that were running before other "
        "copies run (reentrant) or they end Abandoned (30)",
    )
    p.add_argument(
        "--prefetch", metavar="N",
        help="jobs per CPU a node is sent beyond its CPUs, to start as soon as one frees, without waiting for "
        "the scheduler (1); 0: only as many as its free CPUs",
    )  # fmt: skip
    p.add_argument(
        "--close-slice", metavar="N",
        help="queued jobs a close (or an operator's cancel of a whole cluster, or any other bulk cancel) ends per "
        "loop turn, serving everyone else in between (2000): larger ends a big queue in fewer, longer turns",
    )  # fmt: skip
    p.add_argument(
        "--prefetch-max", metavar="N",
        help="where jobs are short, up to N jobs per CPU are sent ahead instead, enough for --prefetch-target "
        "of queued work per CPU, sized from how long each cluster's jobs ran lately (32); at most --prefetch: off",
    )  # fmt: skip
    p.add_argument(
        "--prefetch-target", metavar="S",
        help="seconds of queued work per CPU a node is sent ahead when jobs are short (0.005)",
    )  # fmt: skip
    p.add_argument("--max-message-size", metavar="BYTES", help="largest message accepted (default 64 MiB)")
    p.add_argument(
        "--heartbeat", metavar="S",
        help=f"seconds between Pings to an idle client or node ({DEFAULT_INTERVAL:g}); a peer that hears nothing for "
        f"{MISSES} of them reconnects, and a client silent for {MISSES} of its own is written off (its clusters wait)",
    )  # fmt: skip
    p.add_argument("--handshake-timeout", metavar="S", help="seconds a peer has to authenticate (10)")
    p.add_argument(
        "--max-unauthenticated", metavar="N", help="connections still logging in, in all (256); more are refused"
    )
    p.add_argument(
        "--max-unauthenticated-per-address", metavar="N", help="the same, from one address (32)"
    )
    p.add_argument(
        "--usage-half-life", metavar="S", help="half-life of decayed usage, kept in the state dir (3600, or 1h)"
    )
    p.add_argument(
        "--accounting-retention", metavar="S",
        help="how long the state database keeps each job's accounting record (`dispyadmin history`): "
        "seconds or a duration such as 90d (the default); 0 keeps them forever",
    )  # fmt: skip
    limits = p.add_argument_group(
        "per-user limits", 'defaults for every user; a [users.NAME] table may set its own ("unlimited" lifts one)'
    )
    limits.add_argument("--user-max-connections", metavar="N", help="authenticated connections at once (64)")
    limits.add_argument("--user-max-clusters", metavar="N", help="clusters open at once (32)")
    limits.add_argument(
        "--user-max-queued-bytes", metavar="SIZE",
        help="job arguments and computations kept for unfinished work (512M); a submit or open beyond is refused",
    )  # fmt: skip
    limits.add_argument(
        "--user-max-held-bytes", metavar="SIZE",
        help="results kept until the user's clients acknowledge them (512M); at it, the user's jobs wait",
    )  # fmt: skip
    p.add_argument(
        "--result-retention", metavar="S",
        help="seconds a cluster's program may stay away (gone, stopped, cut off) before the cluster is released: "
        "its uncollected results dropped, its jobs cancelled, one log line; a program back later is told why "
        "(3600, dispy's zombie_interval; 0: forever)",
    )  # fmt: skip
    p.add_argument(
        "--show-others", dest="private_data", action="store_false", default=None,
        help="let clients see other users by name in the scheduler's status (default: only as totals)",
    )  # fmt: skip
    p.add_argument("--loglevel", help="DEBUG, INFO (default), WARNING, ERROR")
    http = p.add_argument_group(
        "HTTP: the dashboard (/), the JSON API (/api/v1/...) that dispyadmin uses, and Prometheus /metrics; drains, "
        "CPU caps and shares set through it are kept in the state and hold across restarts"
    )
    http.add_argument("--http-port", metavar="P", help="serve them on this port (default: off; 0 picks one)")
    http.add_argument("--http-host", metavar="H", help="address to serve them on (default 127.0.0.1); TLS with "
                      "--tls-cert when given; users log in with their secret only over TLS or on loopback")  # fmt: skip
    http.add_argument("--admin-token-file", metavar="F", help="the administrators' bearer token, made (mode 600) if "
                      "absent (default: admin-token in the state dir)")  # fmt: skip
    tls = p.add_argument_group(
        "TLS (clients and nodes verify the scheduler's certificate; `dispyscheduler tls init DIR` makes one)"
    )
    tls.add_argument("--tls-cert", metavar="FILE",
                     help="PEM certificate (chain) of this scheduler: every connection is TLS "
                          "(dispy's --cluster_certfile and --node_certfile work too: one port, one certificate)")  # fmt: skip
    tls.add_argument("--tls-key", metavar="FILE",
                     help="its private key (default: in --tls-cert); under systemd, LoadCredential= and %%d/... "
                          "(dispy's --cluster_keyfile, --node_keyfile)")  # fmt: skip
    for dispy_name, ours in (("certfile", "tls_cert"), ("keyfile", "tls_key")):  # dispyscheduler's own spellings
        aliases = [f"--{side}{sep}{dispy_name}" for side in ("cluster", "node") for sep in ("_", "-")]
        tls.add_argument(*aliases, dest=ours, help=argparse.SUPPRESS)
    tls.add_argument("--tls-ca", metavar="FILE",
                     help="CA whose client certificates nodes and users may present (mutual TLS); a peer "
                          "with no secret logs in by its certificate (CN: the name; OU dispy-node or dispy-user: "
                          "the role; users need certificate = true in the users file)")  # fmt: skip
    tls.add_argument("--tls-require-client-cert", action="store_true", default=None,
                     help="refuse peers without a certificate signed by --tls-ca")  # fmt: skip
    tls.add_argument("--insecure-plaintext", action="store_true", default=None,
                     help="listen off loopback without TLS: anyone on the path reads and can alter "
                          "computations, arguments and results (warned at every start)")  # fmt: skip
    return p


def config_from_args(argv: list[str] | None = None) -> SchedConfig:
    """Parses the command line (and the file it names) into a checked config.

    Raises:
        ConfigError: a bad file, a bad value, an unknown key or flag, or an
            unsafe combination; one line naming the key.
    """
    args = build_parser().parse_args(argv)
    return config_from_namespace(args)


def config_from_namespace(args: argparse.Namespace) -> SchedConfig:
    """`config_from_args` once the flags are parsed (`main` reads `--check-config` and the like first)."""
    values: dict[str, Any] = {}
    if args.config:
        try:
            with open(args.config, "rb") as f:
                given = {k.replace("-", "_"): v for k, v in tomllib.load(f).items()}
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {args.config}: {exc}") from None
        values.update(_checked(given, f"config file {args.config}", strict=True))
    flags = {k: v for k, v in vars(args).items() if v is not None and k not in NOT_SETTINGS}
    values.update(_checked(flags, "command line", strict=False))
    if "node_secret" not in values and "node_verifier" not in values and os.environ.get("DISPY_NODE_SECRET"):
        values["node_secret"] = os.environ["DISPY_NODE_SECRET"]  # kept off the command line (ps shows that)
    if values.get("secret") is not None and values.get("users_file") is not None:
        raise ConfigError("give either secret or users_file, not both")
    if values.get("node_verifier") is not None and values.get("node_secret"):
        raise ConfigError("give either node_verifier or node_secret, not both")
    if isinstance(values.get("node_secret"), str) and looks_like_verifier(values["node_secret"]):
        raise ConfigError("node_secret holds a verifier: give it as node_verifier (--node-verifier)")
    if isinstance(values.get("secret"), str) and looks_like_verifier(values["secret"]):
        raise ConfigError("secret holds a verifier: verifiers belong in a users file (dispyadmin user add)")
    cfg = SchedConfig(**values)
    if cfg.users_file:
        cfg.users = load_users(cfg.users_file)
    if cfg.discovery_port is None:
        cfg.discovery_port = 0 if is_loopback(cfg.host) else DISCOVERY_PORT
    if cfg.state is not None and not (cfg.state.startswith(("postgresql://", "postgres://")) or "=" in cfg.state):
        raise ConfigError(f"state {cfg.state!r}: not a postgresql:// URL or libpq connection string")
    if cfg.http_port is not None and not is_loopback(cfg.http_host) and cfg.tls_cert is None:
        raise ConfigError(
            f"refusing to serve HTTP on non-loopback address {cfg.http_host} without TLS: the admin token and "
            "users' secrets would cross the network in the clear; give --tls-cert"
        )
    if not is_loopback(cfg.host):
        missing = []
        if cfg.secret is None and not cfg.users:
            missing.append("a user secret (--secret or --users-file)")
        if not cfg.node_secret and cfg.node_verifier is None:
            missing.append("a node secret (--node-verifier or --node-secret)")
        if missing:
            raise ConfigError(
                f"refusing to listen on non-loopback address {cfg.host} without {' and '.join(missing)}: "
                "anyone who can reach it could run code on every node"
            )
    tls = cfg.server_tls()
    if tls is not None:
        try:
            tls.context()  # unreadable files are a start-up error, not a failure per connection
        except TLSConfigError as exc:
            raise ConfigError(str(exc)) from None
    elif cfg.tls_key or cfg.tls_ca or cfg.tls_require_client_cert:
        raise ConfigError("tls_key, tls_ca and tls_require_client_cert need tls_cert (the scheduler's certificate)")
    refusal = plaintext_refusal(cfg.host, tls is not None, cfg.insecure_plaintext)
    if refusal is not None:
        raise ConfigError(
            f"refusing to listen without TLS: {refusal}; give --tls-cert and --tls-key "
            "(`dispyscheduler tls init DIR` makes them), or --insecure-plaintext to take that risk"
        )
    if cfg.state_dir is None:
        cfg.state_dir = default_state_dir()
    cfg.prepare_verifiers()
    return cfg


def _checked(values: dict[str, Any], where: str, strict: bool) -> dict[str, Any]:
    """The values given (a file's, or the flags'), each checked against `SchedConfig` and converted."""
    values = dict(values)
    for key in [k for k in values if k.startswith("user_max_") and k in SchedConfig.__struct_fields__]:
        values[key] = limit_value(key.removeprefix("user_"), values[key], f"{where}:", shown=key)
    if isinstance(values.get("loglevel"), str):
        values["loglevel"] = values["loglevel"].upper()
    checked = settings.check(values, SchedConfig, where, strict=strict, hidden=DERIVED)
    return {key: getattr(checked, key) for key in values}


def describe(cfg: SchedConfig) -> str:
    """The effective settings, secrets redacted (`--print-config`)."""
    lines = [settings.show(cfg, SECRETS, DERIVED)]
    for name, entry in sorted(cfg.users.items()):
        limits = ", ".join(f"{k} {'unlimited' if v is None else v}" for k, v in entry.limits.items())
        login = "certificate" if entry.verifier is None else "verifier" + (" or certificate" if entry.certificate else "")
        lines.append(f"# user {name}: share {entry.share:g}, login by {login}" + (f", {limits}" if limits else ""))
    return "\n".join(lines)
