"""gRPC plumbing shared by the platform's servers (broker, telemetry) and the site agent.

No Django here (the agent imports it): ``rpckit.server`` builds and stops the synchronous gRPC
servers (telemetry, agent) in one way (health, reflection, interceptors, message limits,
graceful stop, TLS or mutual TLS credentials that reload renewed certificates);
``rpckit.interceptors`` is the metrics interceptor every server uses (the broker's asyncio
server too), ``rpckit.tls`` holds the identities certificates carry and the credentials made
from files, ``rpckit.auth`` parses bearer tokens.
"""
