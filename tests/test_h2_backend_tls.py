"""
HTTP/2 to backends over TLS (a pool's C{protocol: h2} with a C{tls} block):
a real balancer in front of test HTTP/2 servers speaking TLS on 127.0.0.1
with certificates made by C{openssl}, verification on (the backend's CA
given as C{tls.ca}).  Requests are streams of one TLS connection chosen by
ALPN C{h2}; a backend whose certificate does not verify, or that does not
choose C{h2} by ALPN, gets no request: its connection fails as a refused
one does (counted against it, the log saying why, the request sent to
another backend or answered 503).
"""

from __future__ import annotations

import os
from typing import Any

from OpenSSL import SSL
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.logger import formatEvent, globalLogPublisher
from zope.interface import implementer

from lbtwist.discovery import Answer, Discovery, Found, backendConfigs

from .httphelpers import httpRequests, waitFor
from .support import startBalancer
from .test_h2_backend import H2ServerCase, echo
from .tlscerts import CertificateAuthority


@implementer(IOpenSSLContextFactory)
class ServerContext:
    """
    The TLS context of a test server (with the certificate and key in
    C{pair}) that chooses by ALPN the first of C{alpn} the client offers,
    and refuses a client offering none of them with the
    C{no_application_protocol} alert (as Go's and nginx's servers do); with
    C{alpn} L{None} it does no ALPN at all (Twisted's own server options
    cannot: with no protocol in common they answer an internal error).
    """

    def __init__(self, pair: tuple[str, str], alpn: list[bytes] | None) -> None:
        self.alpn = alpn
        self.context = SSL.Context(SSL.TLS_METHOD)
        self.context.use_certificate_chain_file(pair[0])
        self.context.use_privatekey_file(pair[1])
        if alpn is not None:
            self.context.set_alpn_select_callback(self.select)

    def select(self, connection: SSL.Connection, offered: list[bytes]) -> bytes:
        """
        The first of its protocols the client offered; else the handshake
        fails with the C{no_application_protocol} alert.
        """
        for protocol in self.alpn or ():
            if protocol in offered:
                return protocol
        # (As OpenSSL's own errors are: Twisted's TLS reads them so.)
        raise SSL.Error([("SSL routines", "", "no application protocol")])

    def getContext(self) -> SSL.Context:
        """
        The context, the same for every connection.
        """
        return self.context


class H2TLSBackendTests(H2ServerCase):
    """
    A balancer whose pool speaks HTTP/2 over verified TLS to real (test)
    HTTP/2 servers.
    """

    timeout = 60

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.ca = CertificateAuthority(directory)
        # The backend's own certificate, for the address it is reached at.
        self.good = self.ca.issue("good", ["app.internal", "127.0.0.1"])
        # From the right CA, for another name only.
        self.otherName = self.ca.issue("other-name", ["other.internal"])
        # For the right address, from a CA the balancer does not trust.
        self.otherCA = CertificateAuthority(directory, "another CA").issue(
            "other-ca", ["127.0.0.1"])
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def tlsServer(self, pair: tuple[str, str], alpn: list[bytes] | None = None) -> Any:
        """
        A test HTTP/2 server over TLS with the certificate in C{pair},
        choosing C{h2} by ALPN unless C{alpn} says otherwise (an empty list:
        no ALPN at all), answering with L{echo}.
        """
        server = self.server(echo, ServerContext(pair, [b"h2"] if alpn is None else alpn or None))
        # Each TLS connection's close is over before the test ends.
        self.addCleanup(waitFor, lambda: server.open == 0)
        return server

    def balancer(self, *servers: Any, **pool: Any) -> Any:
        """
        A balancer over C{servers} with C{protocol: h2} and TLS verified
        against the test CA (no retries unless C{pool} says); it and its
        port.
        """
        return startBalancer(self, {
            "listeners": [{"listen": "tcp:0:interface=127.0.0.1", "mode": "http"}],
            "pools": {"web": {"protocol": "h2", "health": {"fall": 100, "interval": 60},
                              "retries": 0, "tls": {"ca": self.ca.cert},
                              "backends": [{"name": f"s{i}", "endpoint": s.endpoint}
                                           for i, s in enumerate(servers)], **pool}},
        })

    def logged(self, words: str) -> list[str]:
        """
        The lines logged so far that contain C{words}.
        """
        lines = [formatEvent(e) for e in self.events]
        return [line for line in lines if words in line]

    @inlineCallbacks
    def test_multiplexed(self) -> Any:
        """
        Requests from several HTTP/1.1 clients at once, the first ones
        while the TLS connection to the backend is still being made (its
        handshake and verification under way), are streams of that one
        connection, which chose C{h2} by ALPN; each gets its own answer.
        """
        server = self.tlsServer(self.good)
        _, port = self.balancer(server)
        results = yield DeferredList([
            httpRequests(port, [("POST", f"/p{i}", b"body%d" % i, {})]) for i in range(8)])
        self.assertEqual([(ok, r[0][0], r[0][2]) for ok, r in results],
                         [(True, 200, b"/p%d body%d" % (i, i)) for i in range(8)])
        [used] = server.used
        self.assertEqual(used.transport.negotiatedProtocol, b"h2")
        # (Beside it, at most the health check's handshake at the start.)
        self.assertLessEqual(server.connections, 2)
        self.assertEqual(len(server.requests), 8)
        self.assertEqual({r[b":scheme"] for r in server.requests}, {b"https"})

    @inlineCallbacks
    def assertRefused(self, server: Any, why: str) -> Any:
        """
        The backend C{server} gets no request: the client gets a 503 as for
        a refused connect, the backend is counted a failure, and the log
        says C{why}; with another backend and retries, every request goes
        there.
        """
        lb, port = self.balancer(server)
        responses = yield httpRequests(port, [("GET", "/n", None, {})])
        self.assertEqual(responses[0][0], 503)
        self.assertEqual(server.requests, [])
        self.assertGreaterEqual(lb.pools["web"].get("s0").failureCount, 1)
        self.assertTrue(self.logged(why), [formatEvent(e) for e in self.events])
        good = self.tlsServer(self.good)
        _, port = self.balancer(server, good, retries=2, policy="roundrobin")
        results = yield DeferredList([
            httpRequests(port, [("GET", f"/g{i}", None, {})]) for i in range(4)])
        self.assertEqual([r[1][0][0] for r in results], [200] * 4)
        self.assertEqual((len(server.requests), len(good.requests)), (0, 4))

    def test_untrusted(self) -> Any:
        """
        A backend whose certificate comes from a CA the balancer does not
        trust is refused, the log saying so.
        """
        return self.assertRefused(self.tlsServer(self.otherCA), "is not trusted by the CA in")

    def test_otherName(self) -> Any:
        """
        A backend whose certificate does not name the host it is reached
        at is refused, the log saying so.
        """
        return self.assertRefused(self.tlsServer(self.otherName),
                                  "does not name 127.0.0.1 (it names other.internal)")

    def test_noALPN(self) -> Any:
        """
        A TLS backend that does no ALPN at all (it cannot speak HTTP/2 over
        TLS) chose no protocol in a handshake that succeeded: its connection
        fails before anything is sent, as a refused one does.
        """
        return self.assertRefused(self.tlsServer(self.good, []),
                                  "did not choose h2 by ALPN (it chose none)")

    def test_http11Only(self) -> Any:
        """
        A TLS backend that offers only C{http/1.1} by ALPN refuses the
        handshake (the C{no_application_protocol} alert): its connection
        fails, the log saying why.
        """
        return self.assertRefused(self.tlsServer(self.good, [b"http/1.1"]),
                                  "speaks none of the ALPN protocols offered")

    def discovered(self, lb: Any, server: Any) -> None:
        """
        Make C{server} the pool's only backend, found by an SRV lookup (so
        verified by its address) and added from the pool's settings.
        """
        pool = lb.pools["web"]
        config = pool.config
        port = int(server.endpoint.rpartition("=")[2])
        [backend] = backendConfigs(
            Discovery("srv", "_h2._tcp.app.internal"), Answer((Found("127.0.0.1", port),), 5),
            config.health, config.tls).values()
        pool.add(backend)
        pool.remove("s0")

    @inlineCallbacks
    def test_discoveredChoosesH2(self) -> Any:
        """
        A discovered backend's TLS connection offers C{h2} by ALPN, which
        the backend chose, and carries the requests as streams.
        """
        listed = self.tlsServer(self.good)
        server = self.tlsServer(self.good)
        lb, port = self.balancer(listed)
        self.discovered(lb, server)
        responses = yield httpRequests(port, [("GET", "/d", None, {})])
        self.assertEqual(responses[0][0], 200)
        self.assertEqual(len(server.requests), 1)
        self.assertEqual([c.transport.negotiatedProtocol for c in server.used], [b"h2"])

    @inlineCallbacks
    def test_discoveredNoALPN(self) -> Any:
        """
        A discovered TLS backend that does no ALPN gets no request: its
        connection fails as a refused one does (503, counted against it).
        """
        listed = self.tlsServer(self.good)
        server = self.tlsServer(self.good, [])
        lb, port = self.balancer(listed)
        self.discovered(lb, server)
        responses = yield httpRequests(port, [("GET", "/n", None, {})])
        self.assertEqual(responses[0][0], 503)
        self.assertEqual(server.requests, [])
        [backend] = lb.pools["web"]
        self.assertGreaterEqual(backend.failureCount, 1)
        self.assertTrue(self.logged("did not choose h2 by ALPN (it chose none)"))
