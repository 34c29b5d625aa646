"""
The admin API: JSON over HTTP on a listener of its own, the Prometheus
metrics, and the live dashboard.

Routes (the REST ones act on any pool; the Go-compatible ones on the first):

    GET    /                                   the dashboard
    GET    /static/{file}                      its script and style
    GET    /metrics                            Prometheus text format
    GET    /api/health                         the balancer's health
    GET    /api/pools                          every pool and its backends
    GET    /api/pools/{pool}                   one pool
    GET    /api/pools/{pool}/backends          its backends
    POST   /api/pools/{pool}/backends          add one
    GET    /api/pools/{pool}/backends/{name}   one backend
    PATCH  /api/pools/{pool}/backends/{name}   change its weight or state
    DELETE /api/pools/{pool}/backends/{name}   remove it (drained first)
    GET    /api/listeners                      the listeners and their counters
    POST   /api/reload                         reload the configuration file
    GET    /health, /list; POST /addServer; DELETE /removeServer   (Go design)

Every request that changes something needs C{Authorization: Bearer TOKEN};
the token is compared in constant time.
"""

from ._api import DEFAULT_ADMIN, TOKEN_VARIABLE, AdminResource
from ._input import APIError
from ._service import AdminService, checkAdmin
from ._views import backendURL, poolView

__all__ = [
    "DEFAULT_ADMIN", "TOKEN_VARIABLE", "APIError", "AdminResource", "AdminService",
    "backendURL", "checkAdmin", "poolView",
]
