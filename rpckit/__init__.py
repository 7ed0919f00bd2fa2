"""gRPC plumbing shared by the platform's servers (broker, telemetry) and the site agent.

No Django here (the agent imports it): ``rpckit.server`` builds and stops every gRPC server of
the project in one way (health, reflection, interceptors, message limits, graceful stop, TLS or
mutual TLS credentials that reload renewed certificates): ``build_server`` for the synchronous
ones (telemetry, agent), and ``rpckit.aio.build_aio_server``, from the same pieces, for the
broker's asyncio server. ``rpckit.interceptors`` holds the base of every interceptor (health and
reflection pass untouched), the metrics interceptor every server uses and the agent's
peer-identity check, ``rpckit.tls`` holds the identities certificates carry and the credentials
made from files, ``rpckit.auth`` parses bearer tokens.
"""
