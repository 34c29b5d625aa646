"""
Worker processes: a master that binds the listeners and runs the control
plane, and N workers that serve the listeners' sockets, so that lbtwist
uses every core (C{--workers N} or C{workers: N | auto}).

L{WorkerGroup} is the master's side (spawning, supervising, pushing the
registry, adding up counters); L{WorkerNode} is a worker's; the control
channel between them is AMP over a socket pair.  An upgrade that changes
the master itself re-executes it, its workers serving on across the exec
(see L{lbtwist.workers._handover}).
"""

from ._handover import HANDOVER_VARIABLE, Handover, MasterImage, releaseSignals, takeHandover
from ._master import Upgraded, WorkerGroup, checkFileLimit
from ._registry import ConfigText
from ._worker import WorkerNode, WorkerSpec, workerLog

__all__ = ["HANDOVER_VARIABLE", "ConfigText", "Handover", "MasterImage", "Upgraded",
           "WorkerGroup", "WorkerNode", "WorkerSpec", "checkFileLimit", "releaseSignals", "takeHandover",
           "workerLog"]
