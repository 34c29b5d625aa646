"""
A chaos relay: a TCP relay between a balancer and a backend that delays,
stalls, cuts or resets connections on command.

C{tc netem} needs privileges and a kernel module; this needs neither.  Put
a L{ChaosRelay} in front of a backend, give the balancer the relay's port,
and set its mode while traffic flows::

    relay = ChaosRelay(reactor, "127.0.0.1", backendPort)
    port = reactor.listenTCP(0, relay, interface="127.0.0.1")
    relay.mode = "delay"; relay.delay = 0.2    # every piece, both ways
    relay.mode = "stall"                        # accept, forward nothing
    relay.cutAll(); relay.resetAll()            # end what is open

Modes (applied to new connections and bytes still to come): C{pass},
C{delay}, C{stall}, C{cut} (close connections at once) and C{reset}
(abort them).  A relayed pair is flow-controlled both ways.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import ClientFactory, Protocol, ServerFactory, connectionDone
from twisted.python.failure import Failure

MODES = ("pass", "delay", "stall", "cut", "reset")


class _End(Protocol):
    """
    One side of a relayed pair.
    """

    transport: Any
    peer: _End | None = None

    def __init__(self, relay: ChaosRelay) -> None:
        self.relay = relay
        self.held: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        relay = self.relay
        if relay.mode == "cut":
            self.transport.loseConnection()
            return
        if relay.mode == "reset":
            self.transport.abortConnection()
            return
        if relay.mode == "stall" or self.peer is None:
            self.held.append(data)
            if sum(map(len, self.held)) > 1048576:
                self.transport.pauseProducing()
            return
        if relay.mode == "delay" and relay.delay > 0:
            relay.reactor.callLater(relay.delay, self._forward, data)
        else:
            self._forward(data)

    def _forward(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and peer.transport.connected:
            peer.transport.write(data)

    def flush(self) -> None:
        """
        Send on what was held while there was no peer or the relay stalled.
        """
        held, self.held = self.held, []
        for data in held:
            self._forward(data)
        self.transport.resumeProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.relay.open.discard(self)
        peer = self.peer
        if peer is not None and peer.transport is not None:
            delay = self.relay.delay if self.relay.mode == "delay" else 0.0
            if delay:
                self.relay.reactor.callLater(delay, peer.transport.loseConnection)
            else:
                peer.transport.loseConnection()


class _ClientEnd(_End):
    """
    The balancer's side: connects on to the backend.
    """

    def connectionMade(self) -> None:
        relay = self.relay
        relay.open.add(self)
        relay.accepted += 1
        if relay.mode == "cut":
            self.transport.loseConnection()
            return
        if relay.mode == "reset":
            self.transport.abortConnection()
            return
        self.transport.pauseProducing()
        factory = _ServerEndFactory(self)
        relay.reactor.connectTCP(relay.host, relay.port, factory, timeout=5)


class _ServerEnd(_End):
    """
    The backend's side of a pair.
    """

    def __init__(self, relay: ChaosRelay, client: _ClientEnd) -> None:
        super().__init__(relay)
        self.peer = client

    def connectionMade(self) -> None:
        client = self.peer
        assert client is not None
        self.relay.open.add(self)
        client.peer = self
        self.transport.registerProducer(client.transport, True)
        client.transport.registerProducer(self.transport, True)
        if self.relay.mode != "stall":
            client.flush()
        else:
            client.transport.resumeProducing()


class _ServerEndFactory(ClientFactory):
    noisy = False

    def __init__(self, client: _ClientEnd) -> None:
        self.client = client

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return _ServerEnd(self.client.relay, self.client)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        # The backend is down: the balancer sees its connection closed.
        self.client.transport.abortConnection()


class ChaosRelay(ServerFactory):
    """
    Relays each accepted connection to C{host}:C{port}, misbehaving as
    its C{mode} says.

    @ivar mode: one of L{MODES}.
    @ivar delay: seconds each piece of data is held in C{delay} mode.
    @ivar accepted: connections accepted in all.
    """

    noisy = False

    def __init__(self, reactor: Any, host: str, port: int) -> None:
        self.reactor = reactor
        self.host = host
        self.port = port
        self.mode = "pass"
        self.delay = 0.0
        self.accepted = 0
        self.open: set[_End] = set()

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return _ClientEnd(self)

    def setMode(self, mode: str, delay: float = 0.0) -> None:
        """
        Change how new connections and further bytes are treated: C{cut}
        and C{reset} also end the connections open now; leaving C{stall}
        sends on what was held.

        @raise ValueError: an unknown mode.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        was, self.mode, self.delay = self.mode, mode, delay
        if mode == "cut":
            self.cutAll()
        elif mode == "reset":
            self.resetAll()
        elif was == "stall" and mode in ("pass", "delay"):
            for end in list(self.open):
                if end.peer is not None:
                    end.flush()

    def cutAll(self) -> int:
        """
        Close every relayed connection (a FIN to both peers).

        @return: how many connection ends were closed.
        """
        ends = list(self.open)
        for end in ends:
            end.transport.loseConnection()
        return len(ends)

    def resetAll(self) -> int:
        """
        Abort every relayed connection (a reset to both peers).

        @return: how many connection ends were aborted.
        """
        ends = list(self.open)
        for end in ends:
            end.transport.abortConnection()
        return len(ends)
