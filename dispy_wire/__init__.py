"""dispy-shared's wire protocol: frames, messages, handshake, errors; and the helpers every process shares.

The protocol modules do no I/O; `dialing`, `liveness`, `loop` and `sdnotify` are the exceptions that
name themselves (reaching a scheduler, keep-alives, the event loop, systemd's notify socket).

Import the module you need (`dispy_wire.messages`, `dispy_wire.handshake`, ...): this package imports
nothing itself, so a process that only frames messages (a node's zygote) does not pay for the login's
SCRAM and X.509 libraries at every start.
"""
