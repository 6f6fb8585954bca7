"""Finding and killing every process of a job, including those that left its process group.

Theory of operation. A job process leads its own session and process group,
so one `killpg` reaches everything it forks, unless a descendant calls
`setsid`/`setpgid` (a daemonized grandchild). Two things catch those:

- The zygote is a child subreaper (`PR_SET_CHILD_SUBREAPER`, Linux): an
  orphan anywhere below it is re-parented to the zygote instead of init, so it
  stays findable (and its zombie is reaped by the zygote's `waitpid(-1)`).
- Every job process carries `DISPY_JOB_MARK=<zygote pid>.<job id>` in its
  environment, which its descendants inherit, forked or exec'd. An orphan
  that is not a job leader is matched to its job by that mark; while the
  leader lives, its descendants outside the group are also found through
  psutil. /proc/PID/environ shows the environment a process was exec'd with,
  not later `putenv`s, and a forked job process was never exec'd: so the
  zygote is started with a blank placeholder (`placeholder()`) and each job
  process writes its mark into that memory in place (`write_mark`), where
  /proc, and every fork below, sees it.

A job's tree is gone when its process group is empty and no marked process
remains. A process that both escaped the group and cleared its environment
cannot be told apart from its siblings: it goes when its zygote goes.

Everything here is best effort against processes that may vanish at any
moment: a process that is already gone is simply not there.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
from collections.abc import Iterable

import psutil

from . import fdio

MARK_VAR = "DISPY_JOB_MARK"
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_NO_NEW_PRIVS = 38


def become_subreaper() -> bool:
    """Makes orphaned descendants of this process its children (Linux); False where unsupported."""
    return _prctl(_PR_SET_CHILD_SUBREAPER)


def no_new_privileges() -> bool:
    """PR_SET_NO_NEW_PRIVS for this process and all it starts: exec of a setuid or file-capability
    program grants nothing (a pool uid's leftover setuid copy, `sudo`). False where unsupported."""
    return _prctl(_PR_SET_NO_NEW_PRIVS)


def _prctl(option: int) -> bool:
    if not hasattr(os, "sched_getaffinity"):  # not Linux
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        return bool(libc.prctl(option, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


_MARK_ROOM = 64


def mark(zygote_pid: int, job_id: int) -> str:
    return f"{zygote_pid}.{job_id}"


def placeholder() -> dict[str, str]:
    """The environment entry a zygote must be started with, for `write_mark` to fill."""
    return {MARK_VAR: " " * _MARK_ROOM}


def write_mark(value: str) -> None:
    """In a job process: writes the mark into the exec-time environment block (see above), then
    into `os.environ` too, for the programs it will exec."""
    slot = mark_slot()
    if slot:
        ctypes.memmove(slot, value.encode().ljust(_MARK_ROOM)[:_MARK_ROOM], _MARK_ROOM)
    os.environ[MARK_VAR] = value


#: where the placeholder's value is (0: nowhere), once looked up; a fork inherits it, at the same address
_slot: int | None = None


def mark_slot() -> int:
    """The address of the placeholder's value in this process's environment block (0 if it was not
    started with one). The zygote looks it up once, before it forks: its jobs then write their mark
    with one copy, instead of loading libc and walking the environment each."""
    global _slot
    if _slot is None:
        _slot = 0
        key = MARK_VAR.encode() + b"="
        try:
            env = ctypes.POINTER(ctypes.c_char_p).in_dll(ctypes.CDLL(None), "environ")
            raw = ctypes.cast(env, ctypes.POINTER(ctypes.c_void_p))
            i = 0
            while env[i] is not None:
                entry = env[i]
                if entry.startswith(key) and len(entry) == len(key) + _MARK_ROOM:
                    _slot = (raw[i] or 0) + len(key)
                    break
                i += 1
        except (OSError, ValueError, AttributeError):
            pass  # not started with the placeholder: exec'd descendants still carry it
    return _slot


def group_alive(pgid: int) -> bool:
    """True while any process (zombies included) is in the process group."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def own_children() -> set[int]:
    """Pids of this process's children, from /proc (cheap) or psutil (portable)."""
    pids: set[int] = set()
    try:
        for tid in os.listdir("/proc/self/task"):
            fd = os.open(f"/proc/self/task/{tid}/children", os.O_RDONLY | os.O_CLOEXEC)  # no file object: the
            try:  # zygote looks each time a job ends
                data = fdio.read_to_end(fd)
            finally:
                os.close(fd)
            pids.update(int(p) for p in data.split())
    except OSError:
        pids = {p.pid for p in psutil.Process().children()}
    return pids


def mark_of(pid: int) -> str:
    """The job mark in a process's environment; '' if none, unreadable or gone."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        try:
            return str(psutil.Process(pid).environ().get(MARK_VAR, "")).strip()
        except (psutil.Error, OSError):
            return ""
    key = MARK_VAR.encode() + b"="
    for item in env.split(b"\0"):
        if item.startswith(key):
            return item[len(key) :].decode(errors="replace").strip()
    return ""


#: the kernel's "this task is exiting" flag (include/linux/sched.h), in /proc/PID/stat's ninth field
_PF_EXITING = 0x4


def exiting(pid: int) -> bool:
    """Whether the process is in its exit and not yet a zombie: its memory (and mark) may be gone while its
    children are not yet handed to their new parent (the kernel's PF_EXITING flag, in /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] != b"Z" and bool(int(fields[6]) & _PF_EXITING)


def descendants(pid: int) -> list[psutil.Process]:
    """The live descendants of `pid` (empty if it is gone)."""
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def signal_procs(procs: Iterable[psutil.Process], sig: int) -> None:
    for proc in procs:
        try:
            proc.send_signal(sig)
        except (psutil.Error, OSError):
            pass


def alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def kill_marked(prefix: str, timeout: float) -> list[int]:
    """SIGKILLs every process on the machine whose mark starts with `prefix`; waits up to
    `timeout` for them to go. The daemon's last resort when a zygote died (its orphans
    went to init). Returns the pids still alive."""
    found = []
    for proc in psutil.process_iter():
        if mark_of(proc.pid).startswith(prefix):
            found.append(proc)
    signal_procs(found, signal.SIGKILL)
    _, left = psutil.wait_procs(found, timeout=timeout)
    return [p.pid for p in left if alive(p)]

