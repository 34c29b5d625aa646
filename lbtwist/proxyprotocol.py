"""
Building the PROXY protocol header a balancer sends to its backends, so they
learn the client's address (HAProxy's C{send-proxy} and C{send-proxy-v2}).

Pure functions of addresses; nothing here does I/O.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from typing import Any

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def _ip(address: Any) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None:
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if not isinstance(host, str) or not isinstance(port, int):
        return None
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]), port
    except ValueError:
        return None


def _pair(source: Any, destination: Any) -> tuple[Any, Any] | None:
    src = _ip(source)
    dst = _ip(destination)
    if src is None or dst is None:
        return None
    if src[0].version != dst[0].version:
        # An IPv4 client on a dual-stack IPv6 socket: show both as IPv6.
        src = (ipaddress.IPv6Address(f"::ffff:{src[0]}") if src[0].version == 4
               else src[0], src[1])
        dst = (ipaddress.IPv6Address(f"::ffff:{dst[0]}") if dst[0].version == 4
               else dst[0], dst[1])
    return src, dst


def proxyHeaderV1(source: Any, destination: Any) -> bytes:
    """
    The text header: C{PROXY TCP4 src dst sport dport\\r\\n}, or
    C{PROXY UNKNOWN\\r\\n} when the addresses are not IP ones.

    @param source: the client's address (an L{IAddress}).
    @param destination: the address the client connected to.
    """
    pair = _pair(source, destination)
    if pair is None:
        return b"PROXY UNKNOWN\r\n"
    (sip, sport), (dip, dport) = pair
    family = "TCP4" if sip.version == 4 else "TCP6"
    return f"PROXY {family} {sip} {dip} {sport} {dport}\r\n".encode("ascii")


def proxyHeaderV2(source: Any, destination: Any) -> bytes:
    """
    The binary header, command PROXY over TCP, or command LOCAL when the
    addresses are not IP ones.
    """
    pair = _pair(source, destination)
    if pair is None:
        return V2_SIGNATURE + b"\x20\x00\x00\x00"
    (sip, sport), (dip, dport) = pair
    body = sip.packed + dip.packed + struct.pack("!HH", sport, dport)
    family = b"\x11" if sip.version == 4 else b"\x21"
    return V2_SIGNATURE + b"\x21" + family + struct.pack("!H", len(body)) + body


PROXY_HEADERS: dict[str, Callable[[Any, Any], bytes]] = {
    "v1": proxyHeaderV1,
    "v2": proxyHeaderV2,
}
