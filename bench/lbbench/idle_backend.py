"""An idle TCP backend for the memory case: accepts connections and holds them open.

Run as a script by the harness::

    python idle_backend.py --ports 40001,40002 --status-file /tmp/x/idle.count

It listens on 127.0.0.1 on each port, reads and discards whatever arrives,
closes a connection when the peer does, and every 20 ms writes the number of
currently open connections to the status file.  It exits on SIGTERM, or by
itself after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path

LOOPBACK = "127.0.0.1"
STATUS_INTERVAL_S = 0.02


class IdleServer:
    """Counts open connections; the connections themselves just sit idle."""

    def __init__(self) -> None:
        self.open_connections = 0

    def protocol(self) -> IdleProtocol:
        """Protocol factory for ``loop.create_server``."""
        return IdleProtocol(self)

    async def report(self, status_file: Path) -> None:
        """Periodically write the open connection count (atomically replaced)."""
        temp = status_file.with_suffix(".tmp")
        while True:
            temp.write_text(str(self.open_connections))
            os.replace(temp, status_file)
            await asyncio.sleep(STATUS_INTERVAL_S)


class IdleProtocol(asyncio.Protocol):
    """One held connection: discards input, closes when the peer does."""

    def __init__(self, server: IdleServer) -> None:
        self.server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.server.open_connections += 1

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.open_connections -= 1


async def serve(ports: list[int], status_file: Path, max_seconds: float) -> None:
    """Listen on ``ports`` until SIGTERM or ``max_seconds`` have passed."""
    idle = IdleServer()
    loop = asyncio.get_running_loop()
    servers = [
        await loop.create_server(idle.protocol, LOOPBACK, port, backlog=4096) for port in ports
    ]
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    reporter = asyncio.create_task(idle.report(status_file))
    try:
        await asyncio.wait_for(stop.wait(), timeout=max_seconds)
    except TimeoutError:
        pass
    reporter.cancel()
    for server in servers:
        server.close()


def main() -> None:
    """Parse arguments and serve."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ports", required=True, help="comma-separated ports")
    parser.add_argument("--status-file", required=True, type=Path)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args()
    ports = [int(port) for port in args.ports.split(",")]
    asyncio.run(serve(ports, args.status_file, args.max_seconds))


if __name__ == "__main__":
    main()
