"""A user-space TCP proxy with latency and jitter (``tc netem`` is not available here).

Put it between a process and PostgreSQL (or an agent): every chunk is held for ``delay`` s
plus a uniform jitter of up to ``jitter`` s, in each direction, in order. RELIABILITY 6.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading

from tests.harness.procs import free_port


class LatencyProxy:
    """Listens on ``127.0.0.1:port`` and forwards to ``127.0.0.1:target_port`` with delay."""

    def __init__(self, target_port: int, *, delay: float, jitter: float = 0.0) -> None:
        self.target_port = target_port
        self.delay = delay
        self.jitter = jitter
        self.port = free_port()
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> LatencyProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port)
        )
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _shutdown(self) -> None:
        """Close the listener, cancel every pump and wait for them: nothing left for the GC."""
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop.stop()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Chunks are timestamped on arrival and released in order after the delay, so the link
        # keeps its throughput and only gains latency (a sleep per chunk would serialize them).
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def release() -> None:
            while True:
                due, chunk = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not chunk:
                    break
                writer.write(chunk)
                await writer.drain()

        sender = asyncio.create_task(release())
        try:
            while True:
                chunk = await reader.read(65536)
                due = loop.time() + self.delay + random.uniform(0, self.jitter)
                await queue.put((due, chunk))
                if not chunk:
                    break
            await sender
        except (ConnectionError, asyncio.CancelledError):
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(
                self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
            )
        except asyncio.CancelledError:
            # Shutting down. Returning (not re-raising) keeps asyncio's stream callback from
            # logging the cancelled handler as an error.
            up_writer.close()
            writer.close()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        self._thread.join(timeout=10)
