"""dispy-shared's wire protocol: frames, messages, handshake, errors (no I/O).

Import the module you need (`dispy_wire.messages`, `dispy_wire.handshake`, ...): this package imports
nothing itself, so a process that only frames messages (a node's zygote) does not pay for the login's
SCRAM and X.509 libraries at every start.
"""
