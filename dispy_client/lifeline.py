"""`python -m dispy_client.lifeline ARGS`: `dispynode ARGS` that ends with its parent.

Its stdin is a pipe from the parent (localnode.py). When that pipe reaches
end of file (the parent exited, however it died: even kill -9), the node
sends itself SIGTERM and stops the way `dispynode` always does, killing its
jobs. Without it, a node whose scheduler vanished would redial for ever.
Kept out of the package's imports so that `-m` runs it cleanly.
"""

from __future__ import annotations

import os
import signal
import sys
import threading


def _watch() -> None:
    while os.read(0, 4096):
        pass
    os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    threading.Thread(target=_watch, name="lifeline", daemon=True).start()
    from dispy_node.main import main as node_main

    node_main(sys.argv[1:])


if __name__ == "__main__":
    main()
