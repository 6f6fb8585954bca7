"""The scheduler's configuration: command line over TOML file over defaults."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dispy_wire.discovery import DISCOVERY_PORT
from dispy_wire.framing import DEFAULT_MAX_SIZE
from dispy_wire.handshake import Role

from .core.state import NO_LIMITS, Limits

DEFAULT_PORT = 9702


class ConfigError(ValueError):
    """A configuration the scheduler refuses to start with; the message says why."""


@dataclass(frozen=True, slots=True)
class UserEntry:
    secret: str
    share: float = 1.0
    limits: Limits = NO_LIMITS


@dataclass(slots=True)
class SchedConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    discovery_port: int | None = None  # None: DISCOVERY_PORT unless listening on loopback; 0: off
    policy: str = "fair"
    secret: str | None = None
    users_file: str | None = None
    node_secret: str = ""
    state_dir: str | None = None
    max_message_size: int = DEFAULT_MAX_SIZE
    handshake_timeout: float = 10.0
    usage_half_life: float = 3600.0
    status_log_interval: float = 60.0
    journal: bool = True  # keep accepted jobs, held results and usage in the state dir's journal
    journal_sync: str = "full"  # full: on disk before acknowledging; normal: survives a kill, not a power cut
    adopt_within: float = 30.0  # after a restart, seconds nodes have to report jobs that were running
    loglevel: str = "INFO"
    name: str = field(default_factory=socket.gethostname)
    users: dict[str, UserEntry] = field(default_factory=dict)

    def secret_for(self, role: Role, name: str) -> str | None:
        """The secret `name` must prove, or None if it may not connect at all."""
        if role is Role.NODE:
            return self.node_secret
        if self.users:
            entry = self.users.get(name)
            return entry.secret if entry else None
        return self.secret if self.secret is not None else ""

    def shares(self) -> dict[str, float]:
        return {name: entry.share for name, entry in self.users.items()}

    def limits(self) -> dict[str, Limits]:
        return {name: entry.limits for name, entry in self.users.items() if entry.limits != NO_LIMITS}


def load_users(path: str) -> dict[str, UserEntry]:
    """Reads `[users.NAME]` tables: `secret`, `share` (default 1) and optional limits.

    Limits (each a non-negative integer; absent means none): `max_cpus`,
    `max_queued_jobs`, `priority_max` (any integer). See docs/policies.md.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read users file {path}: {exc}") from None
    users: dict[str, UserEntry] = {}
    for name, table in data.get("users", {}).items():
        if not isinstance(table, dict) or not isinstance(table.get("secret"), str):
            raise ConfigError(f"users file {path}: [users.{name}] needs secret = \"...\"")
        share = table.get("share", 1)
        if not isinstance(share, (int, float)) or isinstance(share, bool) or share <= 0:
            raise ConfigError(f"users file {path}: [users.{name}] share must be a positive number")
        users[name] = UserEntry(table["secret"], float(share), _limits(table, f"users file {path}: [users.{name}]"))
    if not users:
        raise ConfigError(f"users file {path} defines no [users.NAME] table")
    return users


def _limits(table: dict[str, Any], where: str) -> Limits:
    values: dict[str, int] = {}
    for name in ("max_cpus", "max_queued_jobs", "priority_max"):
        value = table.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or (value < 0 and name != "priority_max"):
            kind = "an integer" if name == "priority_max" else "a non-negative integer"
            raise ConfigError(f"{where} {name} must be {kind}")
        values[name] = value
    return Limits(**values)


def default_state_dir() -> str:
    """`$STATE_DIRECTORY` under systemd, else a per-user directory."""
    if os.environ.get("STATE_DIRECTORY"):
        return os.environ["STATE_DIRECTORY"].split(":")[0]
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return os.path.join(base, "dispyscheduler")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dispyscheduler",
        description="Shared scheduler of a dispy-shared cluster: clients and nodes both connect to it.",
    )
    p.add_argument("--config", metavar="FILE", help="TOML file with any of the options below (flags override it)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help=f"port for clients and nodes; 0 picks a free one (default {DEFAULT_PORT})")
    p.add_argument(
        "--discovery-port",
        type=int,
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
    auth.add_argument("--secret", help="one secret for every user name")
    auth.add_argument(
        "--users-file",
        metavar="FILE",
        help="TOML with [users.NAME] secret = ..., share = N, and optional max_cpus, max_queued_jobs, priority_max",
    )
    p.add_argument("--node-secret", help="secret that nodes must prove (default $DISPY_NODE_SECRET, else empty)")
    p.add_argument("--state-dir", metavar="DIR", help="where the scheduler keeps its state")
    p.add_argument(
        "--no-journal",
        dest="journal",
        action="store_false",
        default=None,
        help="keep nothing across restarts (no journal in the state dir): accepted jobs, held results "
        "and usage history are lost when the scheduler stops",
    )
    p.add_argument(
        "--journal-sync",
        choices=("full", "normal"),
        help="full (default): each turn's journal commit is on disk before its acknowledgements leave; "
        "normal: faster, survives the scheduler being killed but not the machine losing power",
    )
    p.add_argument(
        "--adopt-within",
        type=float,
        metavar="S",
        help="after a restart, seconds nodes have to report the jobs that were running before other "
        "copies run (reentrant) or they end Abandoned (30)",
    )
    p.add_argument("--max-message-size", type=int, metavar="BYTES", help="largest message accepted (default 64 MiB)")
    p.add_argument("--handshake-timeout", type=float, metavar="S", help="seconds a peer has to authenticate (10)")
    p.add_argument("--usage-half-life", type=float, metavar="S", help="half-life of decayed usage, kept in the state dir (3600)")
    p.add_argument("--loglevel", help="DEBUG, INFO (default), WARNING, ERROR")
    return p


def config_from_args(argv: list[str] | None = None) -> SchedConfig:
    """Parses the command line (and the file it names) into a checked config.

    Raises:
        ConfigError: a bad file, a bad value, or an unsafe combination.
    """
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = {}
    if args.config:
        try:
            with open(args.config, "rb") as f:
                values.update(tomllib.load(f))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {args.config}: {exc}") from None
        values = {k.replace("-", "_"): v for k, v in values.items()}
    values.update({k: v for k, v in vars(args).items() if v is not None and k != "config"})
    if "node_secret" not in values and os.environ.get("DISPY_NODE_SECRET"):
        values["node_secret"] = os.environ["DISPY_NODE_SECRET"]  # kept off the command line (ps shows that)
    known = {f.name for f in fields(SchedConfig)} - {"users"}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown option(s) in config: {', '.join(sorted(unknown))}")
    if values.get("secret") is not None and values.get("users_file") is not None:
        raise ConfigError("give either secret or users_file, not both")
    cfg = SchedConfig(**values)
    if cfg.users_file:
        cfg.users = load_users(cfg.users_file)
    if cfg.discovery_port is None:
        cfg.discovery_port = 0 if is_loopback(cfg.host) else DISCOVERY_PORT
    for name in ("port", "discovery_port"):
        if not 0 <= getattr(cfg, name) <= 65535:
            raise ConfigError(f"{name} {getattr(cfg, name)} out of range")
    if cfg.usage_half_life < 0:
        raise ConfigError("usage_half_life must be >= 0 seconds (0: usage never decays)")
    if cfg.journal_sync not in ("full", "normal"):
        raise ConfigError("journal_sync must be full or normal")
    if cfg.adopt_within < 0:
        raise ConfigError("adopt_within must be >= 0 seconds")
    if cfg.max_message_size < 1024:
        raise ConfigError("max_message_size must be at least 1024 bytes")
    if not is_loopback(cfg.host):
        missing = []
        if cfg.secret is None and not cfg.users:
            missing.append("a user secret (--secret or --users-file)")
        if not cfg.node_secret:
            missing.append("a node secret (--node-secret)")
        if missing:
            raise ConfigError(
                f"refusing to listen on non-loopback address {cfg.host} without {' and '.join(missing)}: "
                "anyone who can reach it could run code on every node"
            )
    if cfg.state_dir is None:
        cfg.state_dir = default_state_dir()
    return cfg
