"""
The twistd plugin: C{twistd lb ...}.  The application loads lazily.

Also names lbtwist's reactor, so that C{twistd --reactor=lbtwist} and
C{trial --reactor=lbtwist} can choose it.
"""

from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker

lbtwist = ServiceMaker(
    "lbtwist",
    "lbtwist.tap",
    "An event-driven TCP and HTTP load balancer.",
    "lb",
)

leanReactor = Reactor(
    "lbtwist",
    "lbtwist.reactor",
    "lbtwist's lean epoll reactor, installed by twistd lb (Linux only).",
)
