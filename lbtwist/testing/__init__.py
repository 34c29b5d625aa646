"""
Tools to test a balancer under faults: a scriptable HTTP backend
(C{python -m lbtwist.testing.backend}) and a chaos relay that delays,
stalls, cuts or resets connections on command.

They are what lbtwist's own chaos and soak suites use, and work against
any load balancer.
"""

from .backend import RecordedRequest, ScriptedBackend, parseSize
from .relay import ChaosRelay

__all__ = ["ChaosRelay", "RecordedRequest", "ScriptedBackend", "parseSize"]
