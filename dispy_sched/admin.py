"""`dispyadmin`: the operator's tool for the scheduler's secrets.

    dispyadmin user add NAME [--share N] [--replace] --users-file F
    dispyadmin node-secret
    dispyadmin verifier            (a secret on stdin → its verifier)
    dispyadmin history [--user U] [--since 1d] [--json]   (admin_history.py)

and, through a running scheduler's HTTP API (admin_api.py), status, users,
nodes, clusters, jobs, cancel, drain, undrain, set-cpus, set-share and reload.

Each new secret is drawn here (256 bits), printed once for the operator to
hand over, and only its SCRAM verifier is written: the scheduler never sees
or stores the secret. The users file is created with mode 600, edited in
place (other tables, comments and limits are kept) and replaced atomically.
Subcommands are a table (`_COMMANDS`), so more can join.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import tomllib
from collections.abc import Callable

from dispy_wire.verifier import DEFAULT_ITERATIONS, MIN_ITERATIONS, Verifier, new_secret

from dispy_wire.version import version_line

from . import admin_api, admin_history
from .config import ConfigError, check_private

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class AdminError(Exception):
    """A request dispyadmin refuses; the message says why."""


def _key(name: str) -> str:
    """`name` as a TOML key: bare when it can be, else quoted."""
    return name if _BARE_KEY.fullmatch(name) else json.dumps(name)


def _verifier_line(verifier: Verifier) -> str:
    return f'verifier = "{verifier}"'


def add_user(path: str, name: str, share: float | None, replace: bool, iterations: int) -> str:
    """Adds (or with `replace`, re-keys) user `name` in the users file; returns the new secret.

    Raises:
        AdminError: the user exists (without `replace`) or does not (with it), or a bad file.
    """
    if not name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise AdminError(f"user name {name!r} is empty or has control characters")
    text = ""
    if os.path.exists(path):
        try:
            check_private(path, os.stat(path).st_mode)
        except ConfigError as exc:
            raise AdminError(str(exc)) from None
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            users = tomllib.loads(text).get("users", {})
        except tomllib.TOMLDecodeError as exc:
            raise AdminError(f"cannot read users file {path}: {exc}") from None
        if name in users and not replace:
            raise AdminError(f"user {name!r} is already in {path}; --replace gives them a new secret")
        if name not in users and replace:
            raise AdminError(f"user {name!r} is not in {path}: nothing to replace")
    elif replace:
        raise AdminError(f"{path} does not exist: nothing to replace")
    secret = new_secret()
    line = _verifier_line(Verifier.from_secret(secret, iterations))
    if replace:
        text = _replace_verifier(text, name, line, share)
    else:
        table = [f"[users.{_key(name)}]", line]
        if share is not None:
            table.append(f"share = {share:g}")
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + "\n".join(table) + "\n"
    _write_private(path, text)
    return secret


def _replace_verifier(text: str, name: str, line: str, share: float | None) -> str:
    """Swaps the secret/verifier line (and share, if given) of one table, keeping the rest."""
    lines = text.splitlines()
    headers = {f"[users.{_key(name)}]", f"[users.{json.dumps(name)}]"}
    start = next((i for i, ln in enumerate(lines) if ln.strip() in headers), None)
    if start is None:
        raise AdminError(f"cannot find the [users.{_key(name)}] header to edit; edit the file by hand")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")), len(lines))
    body = [ln for ln in lines[start + 1 : end] if not re.match(r"\s*(secret|verifier)\s*=", ln)]
    if share is not None:
        body = [ln for ln in body if not re.match(r"\s*share\s*=", ln)] + [f"share = {share:g}"]
    return "\n".join([*lines[: start + 1], line, *body, *lines[end:]]) + "\n"


def _write_private(path: str, text: str) -> None:
    """Writes `text` to `path` with mode 600, atomically (a crash leaves the old file)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".users-", dir=directory)  # mkstemp makes it 600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


# ---------------------------------------------------------------- commands


def _cmd_user_add(args: argparse.Namespace) -> int:
    secret = add_user(args.users_file, args.name, args.share, args.replace, args.iterations)
    verb = "has a new secret" if args.replace else "added"
    print(f"user {args.name} {verb} in {args.users_file}; give them this secret (it is shown only now):")
    print(secret)
    return 0


def _cmd_node_secret(args: argparse.Namespace) -> int:
    secret = new_secret()
    verifier = Verifier.from_secret(secret, args.iterations)
    print("node secret: give it to every dispynode (node_secret, or $DISPY_NODE_SECRET; shown only now):")
    print(secret)
    print("scheduler: put this in its config file (node_verifier), or pass it as --node-verifier:")
    print(f'node_verifier = "{verifier}"')
    return 0


def _cmd_verifier(args: argparse.Namespace) -> int:
    secret = sys.stdin.readline().rstrip("\r\n")
    if not secret:
        raise AdminError("no secret on stdin")
    print(_verifier_line(Verifier.from_secret(secret, args.iterations)))
    return 0


def _cmd_leader(args: argparse.Namespace) -> int:
    import psycopg  # only here: the PostgreSQL store is an optional dependency

    from .leadership import describe_leader

    try:
        print(describe_leader(args.state))
    except psycopg.Error as exc:
        raise AdminError(f"cannot read the leader from {args.state}: {' '.join(str(exc).split())}") from None
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dispyadmin",
        description="Manage a dispy-shared scheduler: its secrets (local files), and a running one through its HTTP "
        "API (--http-port): see and manage users, nodes and jobs.",
    )
    p.add_argument("--version", action="version", version=version_line("dispyadmin"))
    sub = p.add_subparsers(dest="command", required=True)
    iterations = argparse.ArgumentParser(add_help=False)
    iterations.add_argument(
        "--iterations", type=int, default=DEFAULT_ITERATIONS, metavar="N",
        help=f"PBKDF2 rounds of the verifier (default {DEFAULT_ITERATIONS}, at least {MIN_ITERATIONS})",
    )  # fmt: skip
    user = sub.add_parser("user", help="users of the users file").add_subparsers(dest="action", required=True)
    add = user.add_parser(
        "add", parents=[iterations], help="add a user with a fresh secret (printed once) and store its verifier"
    )
    add.add_argument("name")
    add.add_argument("--share", type=float, metavar="N", help="the user's fair share (default 1)")
    add.add_argument("--replace", action="store_true", help="give an existing user a new secret")
    add.add_argument("--users-file", required=True, metavar="F", help="created (mode 600) if absent")
    add.set_defaults(run=_cmd_user_add)
    node = sub.add_parser(
        "node-secret", parents=[iterations], help="draw a node secret; print it and the scheduler's node_verifier"
    )
    node.set_defaults(run=_cmd_node_secret)
    ver = sub.add_parser(
        "verifier", parents=[iterations], help="read a secret on stdin, print its verifier (to convert an old file)"
    )
    ver.set_defaults(run=_cmd_verifier)
    leader = sub.add_parser(
        "leader", help="which of the schedulers sharing a PostgreSQL state leads, since when (docs/standby.md)"
    )
    leader.add_argument("--state", required=True, metavar="URL", help="the schedulers' --state postgresql://... URL")
    leader.set_defaults(run=_cmd_leader)
    admin_history.add_parser(sub)
    admin_api.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "iterations", MIN_ITERATIONS) < MIN_ITERATIONS:
        print(f"dispyadmin: --iterations must be at least {MIN_ITERATIONS}", file=sys.stderr)
        return 2
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except (AdminError, ValueError, OSError) as exc:
        print(f"dispyadmin: {exc}", file=sys.stderr)
        return 2
    except admin_api.ApiFailure as exc:  # the scheduler refused, or was not reached
        print(f"dispyadmin: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
