"""
lbtwist's own etcd v3 client, over etcd's JSON gateway (C{/v3/...}) on
L{twisted.web.client.Agent}.

Why not a library: C{etcd3} breaks with current protobuf, C{txaioetcd} is
unmaintained and speaks C{/v3alpha}, which etcd 3.5 no longer serves,
C{aetcd} needs an asyncio loop, and C{etcd3gw} blocks.  The gateway is a
stable part of etcd (3.4 and later serve C{/v3}), and what lbtwist needs of
it is small: range, put, delete, a transaction comparing a key's
C{mod_revision}, a watch, leases and password authentication.

Keys and values are bytes in etcd and base64 in the gateway's JSON; here
keys are text and values bytes, the encoding is done inside.  Every call
goes to the member that answered last; a member that cannot be reached (or
says it has no leader) is left for the next one listed, and a call fails
with L{Unavailable} only when no member answered.

A watch is one long HTTP response whose body is a stream of JSON lines;
L{WatchStream} splits it (a line may arrive in pieces) and hands each
revision's events on as one unit, in order.  A watch that etcd cancels
because its start revision was compacted ends with L{Compacted}, which says
the compact revision, so that the watcher knows to list again.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectError, ConnectionClosed, DNSLookupError, TimeoutError
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
    readBody,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS
from zope.interface import implementer

from ..config import ClusterTLS

# gRPC status codes the gateway answers with.
CODE_OUT_OF_RANGE = 11  # the revision asked for was compacted
CODE_UNAVAILABLE = 14
CODE_UNAUTHENTICATED = 16
DEFAULT_TIMEOUT = 5.0


class EtcdError(Exception):
    """
    etcd refused a call.

    @ivar code: the gRPC status code, or 0.
    @ivar message: etcd's message.
    """

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class Unavailable(EtcdError):
    """
    No member of the cluster could be reached (or none had a leader).
    """


class Compacted(EtcdError):
    """
    The revision asked for is older than the store's compaction.

    @ivar compactRevision: the oldest revision still kept (0 if unknown).
    """

    def __init__(self, compactRevision: int) -> None:
        super().__init__(f"revision compacted (the store keeps {compactRevision} and later)",
                         CODE_OUT_OF_RANGE)
        self.compactRevision = compactRevision


class WatchEnded(EtcdError):
    """
    A watch stream ended without being cancelled by its owner: the
    connection was lost, or etcd cancelled it for another reason.
    """


@attrs.frozen
class KeyValue:
    """
    One key as etcd holds it.

    @ivar key: the key, as text.
    @ivar value: its value (empty for a deletion).
    @ivar modRevision: the revision that last changed it (or deleted it).
    @ivar createRevision: the revision that created it.
    @ivar lease: the lease it is attached to, or 0.
    """

    key: str
    value: bytes
    modRevision: int
    createRevision: int = 0
    lease: int = 0


@attrs.frozen
class Event:
    """
    One change a watch saw: C{PUT} or C{DELETE} of a key.
    """

    type: str
    kv: KeyValue


@attrs.frozen
class RangeResult:
    """
    The keys a range found, and the store's revision they were read at.
    """

    revision: int
    kvs: tuple[KeyValue, ...]


@attrs.frozen
class TxnResult:
    """
    What a transaction did: whether its comparisons held (so its success
    operations ran), and the store's revision after it.
    """

    succeeded: bool
    revision: int


@attrs.frozen
class Lease:
    """
    A lease granted: its ID and time-to-live in seconds.
    """

    id: int
    ttl: int


def encode(data: str | bytes) -> str:
    """
    Text or bytes as the gateway's JSON wants them: base64.
    """
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode("ascii")


def prefixEnd(prefix: str) -> str:
    """
    The end of the range of keys starting with C{prefix} (the prefix with
    its last byte incremented, as etcd's own clients compute it).
    """
    raw = bytearray(prefix.encode())
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return base64.b64encode(bytes(raw)).decode("ascii")
        raw.pop()
    return encode(b"\0")


def keyValue(data: dict[str, Any]) -> KeyValue:
    """
    A key-value from the gateway's JSON (fields left out are zero).
    """
    return KeyValue(
        key=base64.b64decode(data.get("key", "")).decode("utf-8", "replace"),
        value=base64.b64decode(data.get("value", "")),
        modRevision=int(data.get("mod_revision", 0)),
        createRevision=int(data.get("create_revision", 0)),
        lease=int(data.get("lease", 0)),
    )


def putOperation(key: str, value: bytes, lease: int = 0) -> dict[str, Any]:
    """
    A put, as an operation of a transaction.
    """
    put: dict[str, Any] = {"key": encode(key), "value": encode(value)}
    if lease:
        put["lease"] = str(lease)
    return {"request_put": put}


def deleteOperation(key: str) -> dict[str, Any]:
    """
    A delete of one key, as an operation of a transaction.
    """
    return {"request_delete_range": {"key": encode(key)}}


def modRevisionIs(key: str, revision: int) -> dict[str, Any]:
    """
    The comparison "C{key} was last changed at C{revision}" (0: the key
    does not exist), for a transaction.
    """
    return {"key": encode(key), "target": "MOD", "result": "EQUAL",
            "mod_revision": str(revision)}


@implementer(IBodyProducer)
class JSONBody:
    """
    A request body of JSON, produced at once (it is small).
    """

    def __init__(self, data: object) -> None:
        self.body = json.dumps(data).encode()
        self.length = len(self.body)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        """
        Write the whole body at once.
        """
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        """
        Nothing to pause: the body was written whole.
        """

    def stopProducing(self) -> None:
        """
        Nothing to stop: the body was written whole.
        """

    def resumeProducing(self) -> None:
        """
        Nothing to resume: the body was written whole.
        """


# Failures that mean "this member cannot be reached now": try the next one.
_UNREACHABLE = (ConnectError, DNSLookupError, TimeoutError, ResponseNeverReceived,
                ResponseFailed, RequestTransmissionFailed, ConnectionClosed)


class WatchStream(Protocol):
    """
    Reads a watch's streamed body: JSON lines, each a watch response.
    Events are grouped by revision and each revision is handed to
    C{onRevision} as one unit, in order.

    @ivar created: fires once etcd says the watch exists.
    @ivar done: fires with L{None} when the owner cancelled the watch, or
        fails with L{Compacted} (etcd cancelled it: its start revision was
        compacted) or L{WatchEnded} (anything else that ended it).
    """

    log = Logger()
    maxLine = 64 * 1024 * 1024
    transport: Any

    def __init__(self, onRevision: Callable[[int, list[Event]], None]) -> None:
        self.onRevision = onRevision
        self.created: Deferred[None] = Deferred()
        self.done: Deferred[None] = Deferred()
        self._buffer = b""
        self._cancelled = False
        self._ended = False

    def cancel(self) -> None:
        """
        End the watch (its connection is closed); C{done} fires with
        L{None}.
        """
        self._cancelled = True
        if self.transport is not None:
            self.transport.stopProducing()
        self._end(None)

    def dataReceived(self, data: bytes) -> None:
        """
        Buffer what arrived and parse every whole line in it.
        """
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > self.maxLine:
            self._fail(WatchEnded("watch response line too long"))
            return
        for line in lines:
            if self._ended:
                return
            if line.strip():
                self.lineReceived(line)

    def lineReceived(self, line: bytes) -> None:
        """
        One watch response: creation, events, or cancellation.
        """
        try:
            message = json.loads(line)
        except ValueError:
            self._fail(WatchEnded(f"watch sent a line that is not JSON: {line[:80]!r}"))
            return
        if "error" in message:
            error = message["error"]
            self._fail(WatchEnded(str(error.get("message", error)), int(error.get("code", 0))))
            return
        result = message.get("result", {})
        if result.get("created") and not self.created.called:
            self.created.callback(None)
        events = result.get("events") or ()
        byRevision: dict[int, list[Event]] = {}
        for e in events:
            kv = keyValue(e.get("kv", {}))
            byRevision.setdefault(kv.modRevision, []).append(
                Event(e.get("type", "PUT"), kv))
        for revision in sorted(byRevision):
            self.onRevision(revision, byRevision[revision])
        if result.get("canceled"):
            compact = int(result.get("compact_revision", 0))
            if compact:
                self._fail(Compacted(compact))
            else:
                self._fail(WatchEnded(
                    f"etcd cancelled the watch: {result.get('cancel_reason', 'no reason')}"))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        The stream ended: as asked (cancelled), or not (L{WatchEnded}).
        """
        if self._cancelled:
            self._end(None)
        elif reason.check(ResponseDone):
            self._fail(WatchEnded("etcd ended the watch"))
        else:
            self._fail(WatchEnded(f"watch connection lost: {_describe(reason.value)}"))

    def _fail(self, error: Exception) -> None:
        if not self.created.called:
            self.created.errback(error)
        if not self._ended and self.transport is not None:
            self._ended = True
            self.transport.stopProducing()
        self._end(Failure(error))

    def _end(self, result: Failure | None) -> None:
        self._ended = True
        if not self.done.called:
            self.done.callback(None) if result is None else self.done.errback(result)


class EtcdClient:
    """
    A client of an etcd cluster's JSON gateway.

    @ivar urls: the members' client URLs, tried in turn.
    @ivar current: the index in C{urls} of the member used now.
    """

    log = Logger()

    def __init__(self, reactor: Any, urls: Sequence[str], *, username: str | None = None,
                 password: str | None = None, contextFactory: Any = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        if not urls:
            raise ValueError("at least one etcd URL is needed")
        self.reactor = reactor
        self.urls = [u.rstrip("/") for u in urls]
        self.current = 0
        self.username = username
        self.password = password
        self.timeout = timeout
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.retryAutomatically = False
        if contextFactory is None:
            self.agent = Agent(reactor, pool=self.pool, connectTimeout=timeout)
        else:
            self.agent = Agent(reactor, contextFactory, pool=self.pool, connectTimeout=timeout)
        self.token: str | None = None
        self.watches: set[WatchStream] = set()

    def close(self) -> Deferred[None]:
        """
        Cancel every watch and close the idle connections.
        """
        for w in list(self.watches):
            w.cancel()
        # A call answered after this closes its connection instead of
        # keeping it.
        self.pool.persistent = False
        return self.pool.closeCachedConnections()  # type: ignore[no-any-return]

    # -- one call, with fail-over and authentication ----------------------

    def _headers(self) -> Headers:
        headers = Headers({b"content-type": [b"application/json"]})
        if self.token is not None:
            headers.addRawHeader(b"authorization", self.token.encode())
        return headers

    async def _send(self, path: str, body: object, stream: bool = False) -> Any:
        """
        POST C{body} to C{path} of the current member, moving to the next
        member while one cannot be reached; authenticate first (and again
        when the token has expired) if a user name is set.

        @return: the answer's JSON, or with C{stream} the response itself
            (status 200) for its body to be streamed.
        @raise Unavailable: no member answered.
        @raise EtcdError: etcd refused the call.
        """
        if self.username is not None and self.token is None and path != "/v3/auth/authenticate":
            await self.authenticate()
        problems: list[str] = []
        reauthenticated = False
        attempt = 0
        while attempt < len(self.urls):
            url = self.urls[self.current]
            d = self.agent.request(b"POST", (url + path).encode(), self._headers(),
                                   JSONBody(body))
            d.addTimeout(self.timeout, self.reactor)
            try:
                response = await d
                if stream and response.code == 200:
                    return response
                bodyd = readBody(response)
                bodyd.addTimeout(self.timeout, self.reactor)
                raw = await bodyd
            except _UNREACHABLE as e:
                problems.append(f"{url}: {_describe(e)}")
                self._next()
                attempt += 1
                continue
            try:
                answer = json.loads(raw) if raw else {}
            except ValueError:
                answer = {"error": f"answer is not JSON (status {response.code})"}
            if response.code == 200:
                return answer
            message = str(answer.get("message") or answer.get("error") or response.code)
            code = int(answer.get("code", 0))
            if code == CODE_UNAUTHENTICATED and self.username is not None and not reauthenticated:
                reauthenticated = True
                self.token = None
                await self.authenticate()
                continue
            if code == CODE_UNAVAILABLE:
                problems.append(f"{url}: {message}")
                self._next()
                attempt += 1
                continue
            raise EtcdError(message, code)
        raise Unavailable("no etcd member answered: " + "; ".join(problems), CODE_UNAVAILABLE)

    def _next(self) -> None:
        self.current = (self.current + 1) % len(self.urls)

    def _call(self, path: str, body: object) -> Deferred[Any]:
        return Deferred.fromCoroutine(self._send(path, body))

    # -- the calls --------------------------------------------------------

    def authenticate(self) -> Deferred[str]:
        """
        Exchange the user name and password for a token, sent with every
        call from now on.
        """
        async def auth() -> str:
            answer = await self._send(
                "/v3/auth/authenticate", {"name": self.username, "password": self.password})
            self.token = str(answer["token"])
            return self.token

        return Deferred.fromCoroutine(auth())

    def range(self, key: str, prefix: bool = False, revision: int = 0) -> Deferred[RangeResult]:
        """
        The key C{key} (or with C{prefix}, every key starting with it), as
        of C{revision} (0: now).

        @raise Compacted: C{revision} was compacted (its C{compactRevision}
            is 0: the range answer does not say it).
        """
        body: dict[str, Any] = {"key": encode(key)}
        if prefix:
            body["range_end"] = prefixEnd(key)
        if revision:
            body["revision"] = str(revision)

        async def call() -> RangeResult:
            try:
                answer = await self._send("/v3/kv/range", body)
            except EtcdError as e:
                if e.code == CODE_OUT_OF_RANGE:
                    raise Compacted(0) from e
                raise
            return RangeResult(int(answer["header"].get("revision", 0)),
                               tuple(keyValue(kv) for kv in answer.get("kvs", ())))

        return Deferred.fromCoroutine(call())

    def put(self, key: str, value: bytes, lease: int = 0) -> Deferred[int]:
        """
        Set C{key} to C{value} (attached to C{lease}, if given).

        @return: the revision of the change.
        """
        return self._call("/v3/kv/put", putOperation(key, value, lease)["request_put"]).addCallback(
            _revision)

    def delete(self, key: str, prefix: bool = False) -> Deferred[int]:
        """
        Delete C{key} (or with C{prefix}, every key starting with it).

        @return: the store's revision after it.
        """
        body: dict[str, Any] = {"key": encode(key)}
        if prefix:
            body["range_end"] = prefixEnd(key)
        return self._call("/v3/kv/deleterange", body).addCallback(_revision)

    def txn(self, compare: Sequence[dict[str, Any]], success: Sequence[dict[str, Any]],
            failure: Sequence[dict[str, Any]] = ()) -> Deferred[TxnResult]:
        """
        If every comparison holds, run C{success}, else C{failure}: one
        revision of the store either way (see L{modRevisionIs},
        L{putOperation}, L{deleteOperation}).
        """
        body = {"compare": list(compare), "success": list(success), "failure": list(failure)}
        return self._call("/v3/kv/txn", body).addCallback(
            lambda a: TxnResult(bool(a.get("succeeded", False)), _revision(a)))

    def compact(self, revision: int) -> Deferred[int]:
        """
        Discard the history before C{revision}.
        """
        return self._call("/v3/kv/compaction", {"revision": str(revision)}).addCallback(_revision)

    def grantLease(self, ttl: int) -> Deferred[Lease]:
        """
        A new lease of C{ttl} seconds.
        """
        return self._call("/v3/lease/grant", {"TTL": str(ttl)}).addCallback(
            lambda a: Lease(int(a["ID"]), int(a.get("TTL", 0))))

    def keepAlive(self, lease: int) -> Deferred[int]:
        """
        Renew C{lease} once.

        @return: its time-to-live now; 0 if it has expired (or was revoked).
        """
        def ttl(answer: Any) -> int:
            return int(answer.get("result", answer).get("TTL", 0))

        return self._call("/v3/lease/keepalive", {"ID": str(lease)}).addCallback(ttl)

    def revokeLease(self, lease: int) -> Deferred[int]:
        """
        Revoke C{lease}: the keys attached to it are deleted.
        """
        return self._call("/v3/lease/revoke", {"ID": str(lease)}).addCallback(_revision)

    def watch(self, prefix: str, startRevision: int,
              onRevision: Callable[[int, list[Event]], None]) -> Deferred[WatchStream]:
        """
        Watch every key starting with C{prefix}, from C{startRevision} on:
        C{onRevision(revision, events)} is called once per revision, in
        order.

        @return: fires with the stream once etcd has created the watch; its
            C{done} says how it ended (see L{WatchStream}).
        @raise Compacted: C{startRevision} was already compacted.
        """
        body = {"create_request": {"key": encode(prefix), "range_end": prefixEnd(prefix),
                                   "start_revision": str(startRevision)}}

        async def start() -> WatchStream:
            response = await self._send("/v3/watch", body, stream=True)
            stream = WatchStream(onRevision)
            self.watches.add(stream)

            def forget(result: object) -> object:
                self.watches.discard(stream)
                return result

            stream.done.addBoth(forget)
            response.deliverBody(stream)
            created = stream.created
            created.addTimeout(self.timeout, self.reactor)
            try:
                await created
            except TimeoutError:
                stream.cancel()
                raise Unavailable("etcd did not create the watch in time",
                                  CODE_UNAVAILABLE) from None
            except EtcdError:
                # Said by the error raised here: done says it again.
                stream.done.addErrback(lambda _: None)
                raise
            return stream

        return Deferred.fromCoroutine(start())


@implementer(IPolicyForHTTPS)
class _ClusterTLS:
    """
    TLS to the etcd members: their certificates checked against the CA
    given (else the system's), and a client certificate if given.
    """

    def __init__(self, tls: ClusterTLS) -> None:
        from twisted.internet import ssl

        def read(path: str) -> bytes:
            with open(path, "rb") as f:
                return f.read()

        self.trustRoot = (ssl.Certificate.loadPEM(read(tls.ca)) if tls.ca
                          else ssl.platformTrust())
        self.clientCertificate = None
        if tls.cert and tls.key:
            self.clientCertificate = ssl.PrivateCertificate.loadPEM(
                read(tls.cert) + b"\n" + read(tls.key))

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        from twisted.internet import ssl

        return ssl.optionsForClientTLS(hostname.decode("ascii"), trustRoot=self.trustRoot,
                                       clientCertificate=self.clientCertificate)


def tlsPolicy(tls: ClusterTLS) -> Any:
    """
    The TLS policy of the client for a C{cluster.tls} block.

    @raise OSError: a file cannot be read.
    """
    return _ClusterTLS(tls)


def _revision(answer: Any) -> int:
    return int(answer.get("header", {}).get("revision", 0))


def _describe(e: BaseException | None) -> str:
    if isinstance(e, (ResponseFailed, ResponseNeverReceived)):
        reasons = getattr(e, "reasons", [])
        if reasons:
            return str(reasons[0].getErrorMessage())
    return str(e) or type(e).__name__
