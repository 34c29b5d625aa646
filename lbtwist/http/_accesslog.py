"""
The JSON-lines log observer, by the name the README gives it
(C{twistd --logger lbtwist.http.jsonLogger}); it lives in
L{lbtwist.accesslog}.
"""

from ..accesslog import jsonLogger

__all__ = ["jsonLogger"]
