"""
HTTP mode: per-request balancing with keep-alive, pooled backend
connections, safe retries and strict parsing (llhttp through C{httptools}).

L{HTTPProxyFactory} serves a listener; L{HTTPProbe} is the active HTTP
health check; L{jsonLogger} is a twistd log observer factory writing JSON
lines (C{twistd --logger lbtwist.http.jsonLogger}).
"""

from ._accesslog import jsonLogger
from ._probe import HTTPProbe
from ._proxy import HTTPProxyFactory

__all__ = ["HTTPProbe", "HTTPProxyFactory", "jsonLogger"]
