"""
The twistd plugin: C{twistd lb ...}.  The application loads lazily.
"""

from twisted.application.service import ServiceMaker

lbtwist = ServiceMaker(
    "lbtwist",
    "lbtwist.tap",
    "An event-driven TCP and HTTP load balancer.",
    "lb",
)
