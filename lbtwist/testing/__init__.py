"""
Tools to test a balancer under faults: a scriptable HTTP backend
(L{lbtwist.testing.backend}, also C{python -m lbtwist.testing.backend}) and
a chaos relay that delays, stalls, cuts or resets connections on command
(L{lbtwist.testing.relay}).

They are what lbtwist's own chaos and soak suites use, and work in front of
or behind any load balancer.  The modules are not imported here, so that
C{python -m} runs them cleanly.
"""
