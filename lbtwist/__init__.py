"""
lbtwist: an event-driven TCP and HTTP load balancer on Twisted.

Run it with C{twistd lb}; embed it with L{lbtwist.service.LoadBalancer}.
"""

__version__ = "0.1.0"
