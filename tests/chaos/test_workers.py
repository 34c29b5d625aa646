"""
Faults with worker processes: a backend killed under HTTP load while two
workers serve, then one of the workers killed: clients see no hang, only
the requests in flight on the killed worker fail, and every request started
after the worker's replacement is served.  And an access log rotated under
two workers: C{SIGHUP} has them write the new file.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from twisted.internet.defer import inlineCallbacks

from tests.chaos.test_faults import CLIENT_TIMEOUT
from tests.chaos.tools import BackendProcess, fetch, load, report, summary
from tests.support import sleep
from tests.test_workers import GroupTestCase, adminChange, adminGet, inThread


class WorkerFaultsTests(GroupTestCase):
    """
    Backend and worker faults under load, with two workers.
    """

    @inlineCallbacks
    def test_backendThenWorkerKilled(self) -> Any:
        """
        Six clients for five seconds through two HTTP workers over three
        backends: backend a is killed (SIGKILL) at 0.7 s and a worker at
        2 s.  The backend's in-flight requests are retried elsewhere (all
        idempotent), so only the killed worker's own in-flight requests may
        fail (at most one per client); nothing hangs; after the worker is
        replaced every request is served.
        """
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        backends = {}
        for name in ("a", "b", "c"):
            backends[name] = BackendProcess(self, workdir, name)
            yield backends[name].start()
        group = yield self.startGroup(
            2, [(n, b.endpoint) for n, b in backends.items()], mode="http")
        port = group.port
        running = load(port, 6, 5, 100000, lambda n, i: fetch(
            port, "/?bytes=2k&delay=20ms", timeout=CLIENT_TIMEOUT))
        yield sleep(0.7)
        backends["a"].kill()
        yield sleep(1.3)
        workers = (yield inThread(adminGet, group.admin, "/api/workers"))["workers"]
        victim = workers[0]
        os.kill(victim["pid"], signal.SIGKILL)
        killedAt = time.monotonic()
        while time.monotonic() < killedAt + 10:
            now = (yield inThread(adminGet, group.admin, "/api/workers"))["workers"]
            if any(w["worker"] == victim["worker"] and w["pid"] != victim["pid"]
                   and w["state"] == "serving" for w in now):
                break
            yield sleep(0.05)
        else:
            self.fail("the killed worker was not replaced within 10 s")
        replacedAt = time.monotonic()
        outcomes = yield running
        s = summary(outcomes)
        report(self, "backend then worker killed, 2 workers", outcomes=s,
               replacedAfter=round(replacedAt - killedAt, 2))
        self.assertNotIn("hang", {o.kind for o in outcomes})
        failed = [o for o in outcomes if not (o.kind == "ok" and o.status == 200)]
        self.assertLessEqual(len(failed), 6, s)
        self.assertTrue(all(killedAt - 0.5 <= o.started <= killedAt for o in failed),
                        [(o.kind, o.started - killedAt) for o in failed])
        later = [o for o in outcomes if o.started > replacedAt]
        self.assertGreater(len(later), 20, s)
        self.assertTrue(all(o.kind == "ok" and o.status == 200 and o.backend != "a"
                            for o in later))
        yield group.stop(self)

    @inlineCallbacks
    def test_accessLogRotated(self) -> Any:
        """
        Two HTTP workers write the access log; it is renamed (a rotation)
        and the master gets C{SIGHUP}: every request that follows is
        written to the new file, none to the renamed one.  The same after a
        second rotation and C{POST /api/reload}.
        """
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        backend = BackendProcess(self, workdir, "a")
        yield backend.start()
        group = yield self.startGroup(2, [("a", backend.endpoint)], mode="http", pools={"web": {
            "backends": [{"name": "a", "endpoint": backend.endpoint}],
            "access-log": "access.log",
        }})
        path = os.path.join(group.workdir, "access.log")
        yield load(group.port, 4, 5, 40, lambda n, i: fetch(group.port))
        yield sleep(1.5)

        def sighup() -> Any:
            group.process.send_signal(signal.SIGHUP)
            return sleep(0.5)

        def reload() -> Any:
            return inThread(adminChange, group.admin, "POST", "/api/reload", {})

        for rotated, reopen in ((".1", sighup), (".2", reload)):
            os.rename(path, path + rotated)
            with open(path + rotated) as f:
                before = f.read().splitlines()
            yield reopen()
            outcomes = yield load(group.port, 4, 5, 40, lambda n, i: fetch(group.port))
            yield sleep(1.5)
            with open(path + rotated) as f:
                old = f.read().splitlines()
            with open(path) as f:
                new = f.read().splitlines()
            report(self, "access log rotated, 2 workers", how=reopen.__name__,
                   before=len(before), old=len(old), new=len(new))
            self.assertEqual(summary(outcomes), {"ok:200": 40})
            self.assertEqual((len(before), len(old), len(new)), (40, 40, 40))
        yield group.stop(self)
