"""
Worker processes: a master that binds the listeners and runs the control
plane, and N workers that serve the listeners' sockets, so that lbtwist
uses every core (C{--workers N} or C{workers: N | auto}).

L{WorkerGroup} is the master's side (spawning, supervising, pushing the
registry, adding up counters); L{WorkerNode} is a worker's; the control
channel between them is AMP over a socket pair.
"""

from ._master import WorkerGroup, checkFileLimit
from ._registry import ConfigText
from ._worker import WorkerNode, WorkerSpec, workerLog

__all__ = ["ConfigText", "WorkerGroup", "WorkerNode", "WorkerSpec", "checkFileLimit",
           "workerLog"]
