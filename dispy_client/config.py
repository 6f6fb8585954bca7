"""`dispy.config`: dispy's module of network settings, with the values that hold here.

dispy programs read (and some set) these before creating a cluster. Here
nodes and clients dial the scheduler, so only the scheduler's port means
anything: `SharedSchedulerPort`, 9702 as in dispy, the default of
`SharedJobCluster` (and `dispy_port=N` names N + 2, as in dispy). The others
are kept with dispy's values so programs that read them run; setting them
changes nothing.
"""

from __future__ import annotations

#: dispy's base port; its client, node and shared scheduler use it and the next two
DispyPort = 9700
#: dispy's monitor page port (`dispy_client.httpd`)
HTTPServerPort = 8181
#: dispy's discovery groups; no UDP discovery of dispy's kind happens here
IPv6MulticastGroup = "ff05::b409:3171:9705:5134:6159"
IPv4MulticastGroup = "239.255.61.59"
#: seconds dispy waits for a reply to a message
MsgTimeout = 10
#: dispy's cap on a transferred file's size (0: none); here the scheduler's message limit applies
MaxFileSize = 0
ClientPort = DispyPort
NodePort = DispyPort + 1
SharedSchedulerPort = DispyPort + 2
