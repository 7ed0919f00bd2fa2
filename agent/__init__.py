"""The site agent a computing center runs next to its cluster.

It is a gRPC server (``protos/agent.proto``, service ``Agent``) that reports the center's
inventory, answers the platform's benchmark challenges and runs booked workloads, plus a client
that sends heartbeats to the platform and a command that registers the center through the REST
API. It can also simulate a center (honest, slow, flaky or cheating) for demos, tests and scale
runs. It depends on ``protos`` only: no Django here.
"""

__version__ = "0.1.0"
