"""What the daemons' configuration schemas share: checking, durations, exit status, printing.

Each daemon declares its settings once, as a `msgspec.Struct` with
`forbid_unknown_fields=True` and `Annotated[..., msgspec.Meta(...)]` bounds
(`dispy_sched/config.py`, `dispy_node/settings.py`). A TOML file is checked
strictly (`port = "9702"` is a string, refused); command-line values, which
are all strings, are converted (`--port 9702`). Either way a bad value or an
unknown key is one `ConfigError` line naming the key and what it must be,
and the daemon exits with `EX_CONFIG` (78, sysexits.h), which systemd units
list in `RestartPreventExitStatus=`: restarting cannot fix a config.

Durations: a key whose Meta carries `extra={"unit": "seconds"}` takes a
number of seconds or a string with a unit, "90s", "30m", "1h", "7d".
"""

from __future__ import annotations

import argparse
import re
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal, NoReturn, TypeVar

import msgspec

#: exit status of a daemon refusing its configuration (sysexits.h EX_CONFIG)
EX_CONFIG = 78
#: the Meta extra that marks a duration in seconds
SECONDS = {"unit": "seconds"}
#: what `--print-config` shows instead of a secret
REDACTED = "<redacted>"

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# a sign is taken, so that "-1" meets the key's range check, which says what it must be
_DURATION = re.compile(r"\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?)\s*([smhdw]?)\s*", re.IGNORECASE)
_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_UNKNOWN = re.compile(r"Object contains unknown field `(?P<key>[^`]*)`")

S = TypeVar("S", bound=msgspec.Struct)


class ConfigError(ValueError):
    """A configuration a daemon refuses to start with; the message (one line) says which key and why."""


def parse_duration(text: str) -> float:
    """Seconds in "90", "90s", "30m", "1.5h", "7d", "2w".

    Raises:
        ValueError: anything else.
    """
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration such as 90s, 30m, 1h, 7d")
    return float(match[1]) * _UNITS[(match[2] or "s").lower()]


def durations(schema: type[msgspec.Struct]) -> frozenset[str]:
    """The keys of `schema` that are durations (Meta extra `SECONDS`)."""
    hints = typing.get_type_hints(schema, include_extras=True)
    found = set()
    for name, hint in hints.items():
        for part in (hint, *typing.get_args(hint)):  # `Seconds | None` too
            for meta in getattr(part, "__metadata__", ()):
                if isinstance(meta, msgspec.Meta) and meta.extra == SECONDS:
                    found.add(name)
    return frozenset(found)


def keys(schema: type[msgspec.Struct], hidden: Iterable[str] = ()) -> list[str]:
    """The keys a file or the command line may set (fields not starting with _ and not `hidden`)."""
    skip = set(hidden)
    return [f.name for f in msgspec.structs.fields(schema) if not f.name.startswith("_") and f.name not in skip]


def check(
    values: Mapping[str, Any], schema: type[S], where: str, *, strict: bool, hidden: Iterable[str] = ()
) -> S:
    """`values` as a `schema`, or a ConfigError naming `where`, the key, and what it must be.

    Args:
        where: "config file FILE", "command line", "users file FILE: [users.NAME]".
        strict: False for command-line strings, which are converted to the key's type.
        hidden: fields of the schema that neither a file nor a flag may set.
    """
    known = keys(schema, hidden)
    unknown = sorted(k for k in values if k not in known)
    if unknown:
        raise ConfigError(f"{where}: unknown key {', '.join(unknown)}; known keys: {', '.join(known)}")
    spans = durations(schema)
    converted = {}
    for key, value in values.items():
        if key in spans and isinstance(value, str):
            try:
                value = parse_duration(value)
            except ValueError as exc:
                raise ConfigError(f"{where}: {key}: {exc}") from None
        converted[key] = value
    try:
        return msgspec.convert(converted, schema, strict=strict)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{where}: {describe(exc, values, schema)}") from None


def describe(exc: msgspec.ValidationError, values: Mapping[str, Any], schema: type[msgspec.Struct]) -> str:
    """msgspec's "Expected `int`, got `str` - at `$.port`" as "port: expected int, got '9702'"."""
    text = str(exc)
    unknown = _UNKNOWN.fullmatch(text)
    if unknown:
        return f"unknown key {unknown['key']}"
    match = _AT.match(text)
    assert match is not None  # the pattern matches any text
    what, path = match["what"].replace("`", ""), (match["path"] or "").lstrip(".")
    key = re.split(r"[.\[]", path, maxsplit=1)[0]
    if what.startswith("Invalid enum value"):
        what = f"expected one of {', '.join(map(str, _choices(schema, key)))}"
    if key in durations(schema):
        what = what.replace("float", "seconds (a number, or a duration such as 90s, 30m, 1h, 7d)")
    what = re.sub(r"\bfloat\b", "number", (what[:1].lower() + what[1:]).replace(" | null", ""))
    if key in values:
        shown = repr(values[key])
        got = f"got {shown if len(shown) <= 80 else shown[:77] + '...'}"
        what = re.sub(r"got \w+$", lambda _: got, what) if re.search(r"got \w+$", what) else f"{what}, {got}"
    return f"{path}: {what}" if path else what


def _choices(schema: type[msgspec.Struct], key: str) -> tuple[Any, ...]:
    """The values a Literal field (possibly inside Annotated or `| None`) allows."""
    hint = typing.get_type_hints(schema).get(key)
    for arg in (hint, *typing.get_args(hint)):
        if typing.get_origin(arg) is Literal:
            return typing.get_args(arg)
    return ()


def show(settings: msgspec.Struct, secrets: Iterable[str], hidden: Iterable[str] = ()) -> str:
    """The effective settings as TOML-like lines (secrets redacted), for `--print-config`."""
    secret = set(secrets)
    lines = []
    for name in keys(type(settings), hidden):
        value = getattr(settings, name)
        if name in secret and value:
            value = REDACTED
        lines.append(f"{name} = {_toml(value)}" if value is not None else f"# {name} (not set)")
    return "\n".join(lines)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors (an unknown flag, a missing argument) are ConfigErrors: exit status EX_CONFIG."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)
