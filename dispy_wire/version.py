"""The installed dispy-shared's version: pyproject.toml's, read from the package metadata (one place)."""

from __future__ import annotations

import importlib.metadata

from .messages import PROTOCOL_VERSION

try:
    VERSION = importlib.metadata.version("dispy-shared")
except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
    VERSION = "unknown"


def version_line(program: str) -> str:
    """What `--version` prints: the program, the package version and the wire protocol it speaks."""
    return f"{program} (dispy-shared) {VERSION}, protocol {PROTOCOL_VERSION}"
