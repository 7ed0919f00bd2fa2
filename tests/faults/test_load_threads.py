"""Controls of the load generators: a client thread that dies fails the test.

An exception raised in a thread only becomes a warning (``PytestUnhandledThreadExceptionWarning``,
and ``-p no:warnings`` hides it); the storm's clients and the REST writers record it in their
ledger, and the fault tests assert there is none. These servers answer wrongly on purpose.
"""

from __future__ import annotations

import datetime as dt
import http.server
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from tests.harness.booking_load import BookingClient, BookingLedger
from tests.harness.load import Ledger, RestWriter
from tests.harness.procs import wait_until


@pytest.fixture
def refusing_broker() -> Iterator[str]:
    """A gRPC server where every ``Book`` is PERMISSION_DENIED (not retryable: the client dies)."""

    def book(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "not for you")
        return b""

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "interconnect.broker.v1.Broker",
                {"Book": grpc.unary_unary_rpc_method_handler(book)},
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


def test_a_storm_client_that_dies_is_recorded(refusing_broker: str) -> None:
    ledger = BookingLedger()
    client = BookingClient(0, [refusing_broker], "t", ["P"], dt.datetime.now(dt.UTC), ledger)
    client.start()
    client.join(timeout=30)
    assert not client.is_alive()
    assert len(ledger.errors) == 1
    assert "unexpected PERMISSION_DENIED" in ledger.errors[0]


@pytest.fixture
def broken_api() -> Iterator[str]:
    """Answers 201 with a body that has no ``national_id``: the writer's code raises."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server API)
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_a_rest_writer_that_dies_is_recorded(broken_api: str) -> None:
    ledger = Ledger()
    writer = RestWriter(broken_api, "t", ledger, "dead")
    writer.start()
    wait_until(lambda: not writer.is_alive(), timeout=30, what="the writer to die")
    assert len(ledger.errors) == 1
    assert "KeyError: 'national_id'" in ledger.errors[0]
