"""Where the node secret comes from, and keeping it from the jobs.

Whoever holds the node secret may register a node and be sent every user's
code, so a job must never find it. Three ways a job could:

- `/proc/<node pid>/environ` is the environment the daemon was *started*
  with: taking $DISPY_NODE_SECRET out of `os.environ` changes the process's
  own copy, not that page. `/proc/<pid>/cmdline` (a `--node-secret` flag) is
  readable by every local user. So a daemon started with either re-executes
  itself at once, before anything else, without them: the new image gets
  the values through a pipe whose descriptor it reads and closes
  (`_DISPY_NODE_SECRET_FD`), and neither page ever shows the secret again.
  (It was visible for those milliseconds, and to whoever can read the
  environment of the program that started the daemon: `--secret-file` or
  systemd's `LoadCredential=` have no such window.)
- The daemon's memory: it makes itself non-dumpable, so a process of the
  same account (jobs of a node run as an ordinary user, or `--jobs-as-self`)
  can neither read `/proc/<pid>/mem` and `environ` nor attach a debugger.
  Root can, always.
- A file: `--secret-file` must be the daemon's account's alone (no group or
  other permission bits), or the node refuses to start; a systemd
  credential (`$CREDENTIALS_DIRECTORY/node-secret`) is only readable by the
  unit's account by construction.

Where it comes from, first found wins: `--node-secret` or `--secret-file`
(flags; not both), `node_secret` or `secret_file` in the config file (not
both), the credential, $DISPY_NODE_SECRET, else empty.
"""

from __future__ import annotations

import ctypes
import json
import os
import stat
import sys
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from . import fdio

ENV = "DISPY_NODE_SECRET"
CREDENTIAL = "node-secret"
FLAG = "--node-secret"
_HANDOVER_FD = "_DISPY_NODE_SECRET_FD"
_PR_SET_DUMPABLE = 4
_MAX_SECRET = 16 << 10  # far below a pipe's buffer: the hand-over write never blocks

#: the $DISPY_NODE_SECRET the daemon was started with, once it has re-executed without it
_env_handed_over: str | None = None


def keep_from_jobs(args: Namespace, argv_given: bool) -> None:
    """Called first thing in `main`: re-executes the daemon without a secret in its environment or
    command line (it does not return then), or takes back what the previous image handed over.
    Then makes the process non-dumpable.

    Args:
        argv_given: main() was called with an argv of its own (not the process's): the process
            cannot be re-executed; the environment variable is only removed from `os.environ`.
    """
    global _env_handed_over
    handed = _take_handed_over()
    if handed is not None:
        args.node_secret = handed.get("flag")
        _env_handed_over = handed.get("env")
    elif not argv_given and (args.node_secret is not None or ENV in os.environ):
        _reexec({"flag": args.node_secret, "env": os.environ.get(ENV)})
    else:
        _env_handed_over = os.environ.pop(ENV, None)
    _make_undumpable()


def choose(args: Namespace, file: dict[str, Any], fail: Callable[[str], NoReturn]) -> str:
    """The node secret, by the precedence in this module's docstring. Calls `fail` with a message
    for a secret given twice at one level, or a secret file that is missing, empty or not private."""
    levels = (
        ("flags", args.node_secret, getattr(args, "secret_file", None)),
        ("the config file", file.get("node_secret"), file.get("secret_file")),
    )
    for where, value, path in levels:
        if value is not None and path is not None:
            fail(f"{where}: give the node secret once, as node_secret or as secret_file, not both")
        if value is not None:
            return str(value)
        if path is not None:
            try:
                return read_secret_file(Path(path))
            except ValueError as exc:
                fail(str(exc))
    credentials = os.environ.get("CREDENTIALS_DIRECTORY")
    if credentials and (Path(credentials) / CREDENTIAL).exists():
        try:
            return read_secret_file(Path(credentials) / CREDENTIAL, private=False)  # systemd made it so
        except ValueError as exc:
            fail(str(exc))
    if _env_handed_over is not None:
        return _env_handed_over
    return os.environ.get(ENV, "")  # load_config called without main(): as the process has it


def read_secret_file(path: Path, private: bool = True) -> str:
    """The secret in `path` (one line; a final newline is not part of it).

    Raises:
        ValueError: unreadable, not a regular file, empty, or (with `private`) readable or
            writable by others than its owner.
    """
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ValueError(f"secret file {path} is not a regular file")
            if private and st.st_mode & 0o077:
                raise ValueError(
                    f"secret file {path} has mode {stat.S_IMODE(st.st_mode):04o}: others than its owner may "
                    f"read or change it; make it the node account's alone (chmod 600 {path})"
                )
            data = f.read(_MAX_SECRET + 1)
    except OSError as exc:
        raise ValueError(f"cannot read secret file {path}: {exc.strerror or exc}") from None
    text = data.decode("utf-8", errors="strict").removesuffix("\n").removesuffix("\r")
    if not text:
        raise ValueError(f"secret file {path} is empty")
    if len(data) > _MAX_SECRET:
        raise ValueError(f"secret file {path} is over {_MAX_SECRET} bytes: not a secret")
    return text


def _reexec(values: dict[str, str | None]) -> NoReturn:
    data = json.dumps(values).encode()
    if len(data) > _MAX_SECRET:
        sys.exit(f"dispynode: the node secret is over {_MAX_SECRET} bytes")
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    os.set_inheritable(r, True)
    env = {k: v for k, v in os.environ.items() if k != ENV}
    env[_HANDOVER_FD] = str(r)
    sys.stdout.flush()
    sys.stderr.flush()
    argv = [sys.executable, *_without_secret_flag(sys.orig_argv[1:])]  # this very interpreter, found again
    os.execve(sys.executable, argv, env)


def _without_secret_flag(argv: list[str]) -> list[str]:
    """`argv` less `--node-secret S` and `--node-secret=S` (the parser takes no abbreviations)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == FLAG:
            skip = True
        elif not arg.startswith(FLAG + "="):
            out.append(arg)
    return out


def _take_handed_over() -> dict[str, str | None] | None:
    fd_text = os.environ.pop(_HANDOVER_FD, None)
    if fd_text is None:
        return None
    fd = int(fd_text)
    try:
        data = fdio.read_to_end(fd)
    finally:
        os.close(fd)
    values: dict[str, str | None] = json.loads(data)
    return values


def _make_undumpable() -> None:
    """Denies processes of our own account /proc/<pid>/mem, environ and ptrace (Linux; elsewhere a no-op)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass
