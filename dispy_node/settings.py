"""dispynode's settings: the schema its config file and flags are checked against.

Every key of the TOML file (`--config`) and every flag that sets one is a
field here, with its type and bounds; `dispy_wire.settings.check` turns a bad
value or an unknown key into one line naming it (exit status 78). None means
"not given at this level": `main.load_config` then looks at the next one
(flags, file, environment, default). Values whose meaning needs more than a
type (sizes such as "2G", uid ranges, HH:MM times) are strings here and are
parsed, naming the key, where they are used.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from dispy_wire.settings import SECONDS

Seconds = Annotated[float, msgspec.Meta(ge=0, extra=SECONDS)]
PositiveSeconds = Annotated[float, msgspec.Meta(gt=0, extra=SECONDS)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
Size = Annotated[int, msgspec.Meta(ge=1)] | str  # bytes, or "512M"


class NodeSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    scheduler: str | None = None  # HOST:PORT
    discover: bool | None = None
    discovery_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] | None = None
    cpus: int | None = None  # negative: all but -N
    name: str | None = None
    node_secret: str | None = None
    secret_file: str | None = None
    heartbeat: PositiveSeconds | None = None
    work_dir: str | None = None
    kill_grace: Seconds | None = None
    loglevel: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] | None = None
    scheduler_grace: Seconds | None = None
    shared_run_as: str | None = None
    job_uids: str | None = None  # FIRST-LAST
    max_memory: Size | None = None
    max_cpu_time: Positive | None = None
    max_job_time: PositiveSeconds | None = None
    max_open_files: Positive | None = None
    max_processes: Positive | None = None
    max_output: Size | None = None
    setup_timeout: PositiveSeconds | None = None
    tls_ca: str | None = None
    tls_fingerprint: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    insecure_plaintext: bool | None = None
    yield_load: Annotated[float, msgspec.Meta(gt=0)] | None = None
    yield_window: PositiveSeconds | None = None
    service_start: str | None = None  # HH:MM
    service_stop: str | None = None
    service_end: str | None = None
    serve: Positive | None = None
    isolation: Literal["fork", "worker"] | None = None  # dispy_wire.isolation.MODES
    worker_jobs: Positive | None = None
    worker_memory_growth: Size | None = None

