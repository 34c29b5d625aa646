"""
The access log: one structured event per request, and a JSON-lines observer.

An upgraded request (a WebSocket) is logged when its tunnel closes, not at
the C{101}: its C{bytesIn} and C{bytesOut} are the tunnel's bytes each way
and its C{duration} runs from the request to the close.

Events are emitted in the C{lbtwist.access} namespace with the fields
C{client}, C{method}, C{path}, C{status}, C{backend}, C{bytesIn},
C{bytesOut}, C{duration} and C{retries}; twistd's C{--logger} decides where
they go.  Nothing is formatted unless an observer formats it.
"""

from __future__ import annotations

import os
import sys
from typing import IO, TYPE_CHECKING, Any

from twisted.logger import FileLogObserver, Logger, jsonFileLogObserver

if TYPE_CHECKING:
    from ._proxy import Exchange

ACCESS_FORMAT = (
    "{client} {method} {path} {status} backend={backend} in={bytesIn} "
    "out={bytesOut} {duration:.4f}s retries={retries}"
)


def logRequest(log: Logger, ex: Exchange, duration: float) -> None:
    """
    Emit the access-log event of one finished exchange.
    """
    backend = ex.backend
    log.info(
        ACCESS_FORMAT,
        client=ex.client.clientName,
        method=ex.method.decode("latin-1"),
        path=ex.url.decode("latin-1"),
        status=ex.status,
        backend=backend.name if backend is not None else None,
        bytesIn=ex.bytesIn,
        bytesOut=ex.bytesOut,
        duration=duration,
        retries=ex.retries,
    )


def jsonLogger(stream: IO[str] | None = None) -> FileLogObserver:
    """
    A log observer writing every event as one JSON line: give
    C{twistd --logger lbtwist.http.jsonLogger}.

    It writes to the file named by C{$LBTWIST_JSON_LOG} (appended), or to
    the process's original standard output.
    """
    if stream is None:
        path = os.environ.get("LBTWIST_JSON_LOG")
        # Kept open for the life of the process, as twistd's own log file is.
        out: Any = open(path, "a", encoding="utf-8") if path else sys.__stdout__  # noqa: SIM115
    else:
        out = stream
    return jsonFileLogObserver(out, recordSeparator="")
