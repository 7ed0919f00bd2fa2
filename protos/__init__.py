"""gRPC contracts of the platform.

The ``.proto`` files in this folder are the single source; ``make protos`` generates the
``*_pb2.py``, ``*_pb2_grpc.py`` and ``*_pb2.pyi`` modules next to them (they are gitignored).
Import them as ``from protos import agent_pb2, agent_pb2_grpc``.
"""
