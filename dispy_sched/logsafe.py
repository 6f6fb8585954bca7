"""Log lines a peer cannot forge or flood.

`peer_text` escapes what a peer chose (user, node and cluster names, error
texts) before it reaches a log line: a newline in a cluster name would
otherwise start a line that looks like the scheduler's own. (Lines a peer
can trigger at will go through `dispy_wire.discovery.Throttle`.)
"""

from __future__ import annotations

#: longer peer strings are cut: a log line is not a place for megabytes
TEXT_LIMIT = 200


def peer_text(text: object, limit: int = TEXT_LIMIT) -> str:
    """`text` with every control, format or separator character escaped (\\n, \\x1b, \\u2028 ...), cut to `limit`."""
    s = str(text)
    cut = len(s) > limit
    s = s[:limit]
    if s.isprintable():  # the common case: nothing to escape (str.isprintable is false for every C* and Z[lp])
        return s + "…" if cut else s
    out = []
    for ch in s:
        if ch.isprintable() or ch == " ":
            out.append(ch)
        elif ch in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    return "".join(out) + ("…" if cut else "")

