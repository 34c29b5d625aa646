"""The memory case: RSS of a proxy holding N idle client connections.

The harness starts an idle backend (:mod:`lbbench.idle_backend`) on two ports,
starts the proxy in front of it, records the proxy's RSS, then opens N client
connections from this process and records the RSS again once it is stable.

* TCP proxies: plain connections (non-blocking connects in batches, paced by
  how many connections have reached the backend); the RSS is read once the
  backend holds them all.
* HTTP/2 targets (h2c): each connection sends the client preface and an empty
  SETTINGS frame, waits for the server's SETTINGS (the first frame of its
  preface) and acknowledges it, then stays idle with no stream, so no backend
  connection is made: the RSS growth is what an idle HTTP/2 connection costs.
"""

from __future__ import annotations

import selectors
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lbbench.configs import LOOPBACK
from lbbench.processes import ProcessManager, StartError, free_port, rss_kib, wait_listening
from lbbench.targets import H2C, BenchContext, RunningTarget, TargetSpec, launch

# Twisted listens with a backlog of 50 by default: a larger burst of connects
# overflows the accept queue and the dropped SYNs are only retried after 1 s.
# So connect in batches of 40 and start a batch only when at most PACE_SLACK
# earlier connections have not reached the backend yet.
BATCH_SIZE = 40
PACE_SLACK = 10
CONNECT_TIMEOUT_S = 5.0
PACE_TIMEOUT_S = 2.0
OPEN_TIMEOUT_S = 120.0
CONNECTIONS_PER_SOURCE = 20_000
RSS_STABLE_KIB = 256
RSS_STABLE_SAMPLES = 3
SAMPLE_INTERVAL_S = 0.5
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_SETTINGS = 0x4
H2_ACK = 0x1
H2_FRAME_HEADER_BYTES = 9
H2_HANDSHAKE_TIMEOUT_S = 5.0


def h2_frame(frame_type: int, flags: int = 0, payload: bytes = b"", stream_id: int = 0) -> bytes:
    """One HTTP/2 frame: the 9-byte header (length, type, flags, stream id) and ``payload``."""
    header = len(payload).to_bytes(3, "big") + bytes([frame_type, flags])
    return header + stream_id.to_bytes(4, "big") + payload


H2_CLIENT_PREFACE = H2_PREFACE + h2_frame(H2_SETTINGS)
H2_SETTINGS_ACK = h2_frame(H2_SETTINGS, H2_ACK)


def server_preface_state(received: bytes) -> bool | None:
    """
    Whether ``received``, the first bytes from an HTTP/2 server, open its
    preface: True once they start with a whole SETTINGS frame that is not an
    acknowledgement (RFC 9113 section 3.4), False if they start with anything
    else, None while they are too short to tell.
    """
    if len(received) < H2_FRAME_HEADER_BYTES:
        return None
    length = int.from_bytes(received[:3], "big")
    if received[3] != H2_SETTINGS or received[4] & H2_ACK or length % 6:
        return False
    return True if len(received) >= H2_FRAME_HEADER_BYTES + length else None


@dataclass
class MemoryResult:
    """Outcome of the memory case for one target; ``kind`` is "tcp" (idle connections
    through a TCP proxy) or "h2c" (idle HTTP/2 connections, ``h2_ready`` of them past
    the SETTINGS exchange)."""

    target: str
    status: str
    detail: str
    requested: int
    opened: int = 0
    backend_connections: int = 0
    rss_before_kib: int = 0
    rss_after_kib: int = 0
    kib_per_connection: float | None = None
    open_seconds: float = 0.0
    settle_seconds: float = 0.0
    kind: str = "tcp"
    h2_ready: int = 0

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return asdict(self)


class BackendCounter:
    """Reads the idle backend's open-connection count from its status file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self) -> int:
        try:
            return int(self.path.read_text() or 0)
        except (OSError, ValueError):
            return 0


def _source_address(index: int) -> str:
    """Client source address for connection ``index``: 127.0.0.1, then .2, .3, ..."""
    return f"127.0.0.{1 + index // CONNECTIONS_PER_SOURCE}"


def _start_connect(port: int, source: str) -> socket.socket:
    """Begin a non-blocking connect from ``source`` to ``127.0.0.1:port``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    if source != LOOPBACK:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
    sock.connect_ex((LOOPBACK, port))
    return sock


def _close_registered(selector: selectors.BaseSelector) -> None:
    """Close the sockets still registered with ``selector`` (each its key's data)."""
    for key in list(selector.get_map().values()):
        selector.unregister(key.fileobj)
        key.data.close()


def _finish_connects(pending: list[socket.socket], timeout: float) -> list[socket.socket]:
    """Wait for pending connects; return the connected sockets, close the others."""
    connected: list[socket.socket] = []
    with selectors.DefaultSelector() as selector:
        for sock in pending:
            selector.register(sock, selectors.EVENT_WRITE, data=sock)
        deadline = time.monotonic() + timeout
        while selector.get_map() and time.monotonic() < deadline:
            for key, _events in selector.select(timeout=0.1):
                sock = key.data
                selector.unregister(sock)
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    connected.append(sock)
                else:
                    sock.close()
        _close_registered(selector)
    return connected


def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` every 5 ms for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return condition()


def _wait_for_backend(backend_count: BackendCounter, at_least: int, timeout: float) -> bool:
    """Wait until the backend holds at least ``at_least`` connections."""
    return _wait_for(lambda: backend_count() >= at_least, timeout)


def _open_in_batches(
    port: int, count: int, finish: Callable[[list[socket.socket], int], list[socket.socket]]
) -> tuple[int, list[socket.socket]]:
    """
    Open up to ``count`` connections to ``port`` in batches (bounded in
    time); ``finish(batch, held)`` is given each batch's connected sockets
    and the number held before it, and returns those to keep.  Return
    (connections made, connections kept).
    """
    clients: list[socket.socket] = []
    connected = 0
    deadline = time.monotonic() + OPEN_TIMEOUT_S
    for start in range(0, count, BATCH_SIZE):
        if time.monotonic() > deadline:
            break
        batch_size = min(BATCH_SIZE, count - start)
        try:
            pending = [_start_connect(port, _source_address(start + i)) for i in range(batch_size)]
        except OSError as exc:
            print(f"  stopped opening connections at {len(clients)}: {exc}", file=sys.stderr)
            break
        batch = _finish_connects(pending, CONNECT_TIMEOUT_S)
        connected += len(batch)
        clients.extend(finish(batch, len(clients)))
    return connected, clients


def open_clients(port: int, count: int, backend_count: BackendCounter) -> list[socket.socket]:
    """Open up to ``count`` idle connections to ``port`` in paced batches (bounded in time):
    each batch starts once all but ``PACE_SLACK`` of the earlier ones reached the backend."""

    def pace(batch: list[socket.socket], held: int) -> list[socket.socket]:
        _wait_for_backend(backend_count, held + len(batch) - PACE_SLACK, PACE_TIMEOUT_S)
        return batch

    return _open_in_batches(port, count, pace)[1]


def _h2_handshake(connected: list[socket.socket], timeout: float) -> list[socket.socket]:
    """
    Send the client preface and an empty SETTINGS frame on each connected
    socket, wait for the server's SETTINGS and acknowledge it; return the
    sockets that got that far, closing the others.
    """
    ready: list[socket.socket] = []
    received: dict[socket.socket, bytes] = {}
    with selectors.DefaultSelector() as selector:
        for sock in connected:
            try:
                sent = sock.send(H2_CLIENT_PREFACE)
            except OSError:
                sent = 0
            if sent != len(H2_CLIENT_PREFACE):
                sock.close()
                continue
            received[sock] = b""
            selector.register(sock, selectors.EVENT_READ, data=sock)
        deadline = time.monotonic() + timeout
        while selector.get_map() and time.monotonic() < deadline:
            for key, _events in selector.select(timeout=0.1):
                sock = key.data
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                received[sock] += data
                state = server_preface_state(received[sock]) if data else False
                if state is None:
                    continue
                selector.unregister(sock)
                if state and sock.send(H2_SETTINGS_ACK) == len(H2_SETTINGS_ACK):
                    ready.append(sock)
                else:
                    sock.close()
        _close_registered(selector)
    return ready


def open_h2_clients(port: int, count: int) -> tuple[int, list[socket.socket]]:
    """
    Open up to ``count`` idle HTTP/2 connections to ``port`` in batches, each
    batch past the SETTINGS exchange before the next starts (bounded in
    time); return (TCP connections made, the connections past the exchange).
    """
    return _open_in_batches(
        port, count, lambda batch, _held: _h2_handshake(batch, H2_HANDSHAKE_TIMEOUT_S)
    )


def settle_rss(
    pids: list[int], backend_count: Callable[[], int], expected: int, timeout: float
) -> int:
    """Wait until ``backend_count()`` reaches ``expected`` and RSS is stable; return RSS."""
    deadline = time.monotonic() + timeout
    previous = rss_kib(pids)
    stable = 0
    while time.monotonic() < deadline and stable < RSS_STABLE_SAMPLES:
        time.sleep(SAMPLE_INTERVAL_S)
        current = rss_kib(pids)
        all_connected = backend_count() >= expected
        stable = stable + 1 if all_connected and abs(current - previous) <= RSS_STABLE_KIB else 0
        previous = current
    return previous


def _close_all(sockets: list[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def run_memory_case(
    spec: TargetSpec,
    ctx: BenchContext,
    manager: ProcessManager,
    count: int,
    settle_timeout: float,
    backend_cpu: int | None,
) -> MemoryResult:
    """Measure ``spec``'s RSS with ``count`` idle connections through it (or, for an h2c
    target, to it: HTTP/2 connections with no stream)."""
    result = MemoryResult(spec.name, "unavailable", "", count)
    backend_ports = [free_port(), free_port()]
    counter = BackendCounter(ctx.work_dir / f"idle-{spec.name}.count")
    idle_script = Path(__file__).with_name("idle_backend.py")
    backend = manager.start(
        f"idle-backend-{spec.name}",
        [sys.executable, str(idle_script), "--ports", ",".join(map(str, backend_ports)),
         "--status-file", str(counter.path), "--max-seconds", "600"],
        cpu=backend_cpu,
        raise_nofile=True,
    )  # fmt: skip
    clients: list[socket.socket] = []
    target: RunningTarget | None = None
    try:
        for port in backend_ports:
            wait_listening(backend, port, ctx.start_timeout)
        target = launch(spec, ctx, manager, free_port(), backend_ports, f"{spec.name}-memory")
        _wait_for(lambda: counter() == 0, 5.0)  # the start-up check's connection is gone
        pids = target.measured_pids()
        result.rss_before_kib = rss_kib(pids)
        started = time.monotonic()
        held: Callable[[], int] = counter
        if spec.protocol == H2C:
            result.kind = "h2c"
            result.opened, clients = open_h2_clients(target.port, count)
            result.h2_ready = len(clients)
            held = clients.__len__  # no backend connection to wait for
        else:
            clients = open_clients(target.port, count, counter)
            result.opened = len(clients)
        result.open_seconds = round(time.monotonic() - started, 2)
        started = time.monotonic()
        result.rss_after_kib = settle_rss(pids, held, len(clients), settle_timeout)
        result.settle_seconds = round(time.monotonic() - started, 2)
        result.backend_connections = counter()
        if target.process is not None and not target.process.is_running():
            raise StartError(
                f"{spec.name} exited during the memory case", target.process.log_tail()
            )
        if clients:
            growth = result.rss_after_kib - result.rss_before_kib
            result.kib_per_connection = round(growth / len(clients), 2)
        result.status = "ok"
        result.detail = _detail(result)
    except StartError as exc:
        result.detail = str(exc)
    finally:
        _close_all(clients)
        if target is not None and target.process is not None:
            manager.stop(target.process)
        manager.stop(backend)
    return result


def _detail(result: MemoryResult) -> str:
    """A short note on anything that went less than perfectly."""
    notes = []
    if result.opened < result.requested:
        notes.append(f"only {result.opened} of {result.requested} client connections opened")
    if result.kind == "h2c":
        if result.h2_ready < result.opened:
            notes.append(f"only {result.h2_ready} got the server's SETTINGS")
        if result.backend_connections:
            notes.append(f"{result.backend_connections} backend connections (expected none)")
    elif result.backend_connections < result.opened:
        notes.append(f"only {result.backend_connections} reached the backend")
    return "; ".join(notes) or "ok"
