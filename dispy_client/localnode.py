"""Starting and stopping a `dispynode` child process that ends when we do.

The child is `python -m dispy_client.lifeline ARGS` (see lifeline.py): the
node, plus a watch on its stdin, a pipe from us that closes when we exit,
however we die.
"""

from __future__ import annotations

import os
import subprocess
import sys


def start(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Starts a local node with `argv` as its `dispynode` arguments and `env` added to ours.

    Its stdout is discarded; its warnings go to our stderr.
    """
    return subprocess.Popen(
        [sys.executable, "-m", "dispy_client.lifeline", *argv],
        env={**os.environ, **(env or {})},
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # the user's Ctrl-C reaches us, and we stop the node in order
    )


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Stops a node started by `start` (SIGTERM, then SIGKILL after `timeout`)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    if proc.stdin is not None:
        proc.stdin.close()
