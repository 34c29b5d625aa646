"""
Tests for L{lbtwist.sni}: reading the server name from real ClientHellos,
made by Python's C{ssl} module, at every split of their bytes.
"""

from __future__ import annotations

import ssl
import struct

from twisted.trial.unittest import SynchronousTestCase

from lbtwist.sni import MAX_RECORD, NEED_MORE, Hello, NotTLS, readClientHello


def clientHello(serverName: str | None) -> bytes:
    """
    The first bytes a TLS client sends, with C{serverName} as its SNI.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=serverName)
    try:
        client.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


class ClientHelloTests(SynchronousTestCase):
    """
    L{readClientHello}.
    """

    def test_serverName(self) -> None:
        """
        The name a client asks for is read, lowercase; at every shorter
        prefix of the hello the answer is: need more.
        """
        hello = clientHello("DB.Example.com")
        self.assertEqual(readClientHello(hello), Hello("db.example.com"))
        self.assertEqual(readClientHello(hello + b"more bytes"), Hello("db.example.com"))
        for cut in range(len(hello)):
            self.assertIs(readClientHello(hello[:cut]), NEED_MORE, cut)

    def test_noServerName(self) -> None:
        """
        A hello without SNI (a client given an address) has no name.
        """
        hello = clientHello(None)
        self.assertEqual(readClientHello(hello), Hello(None))
        for cut in range(len(hello)):
            self.assertIs(readClientHello(hello[:cut]), NEED_MORE, cut)

    def test_notTLS(self) -> None:
        """
        Plain text, an oversized record, another record type or handshake
        message, and a cut-down hello are not TLS.
        """
        hello = clientHello("a.example.com")
        body = hello[5:]
        cases = [
            b"GET / HTTP/1.1\r\n",
            b"G",
            b"\x16\x03\x01" + struct.pack(">H", MAX_RECORD + 1),
            b"\x17" + hello[1:],
            hello[:5] + b"\x02" + body[1:],
            # The record claims less than the hello inside it.
            hello[:3] + struct.pack(">H", 60) + body[:60],
        ]
        for data in cases:
            self.assertIsInstance(readClientHello(data), NotTLS, data[:20])

    def test_truncatedInside(self) -> None:
        """
        A hello whose inner lengths run past its record is refused, at any
        cut of its body, never read out of bounds.
        """
        hello = clientHello("a.example.com")
        for cut in range(10, len(hello) - 5):
            body = hello[5:5 + cut]
            # Keep the handshake length but shorten the record to match.
            data = hello[:3] + struct.pack(">H", len(body)) + body
            result = readClientHello(data)
            self.assertIsInstance(result, NotTLS, cut)
