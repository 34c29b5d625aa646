"""Helpers for the lbtwist benchmark harness (``bench/bench.py``).

The package is split by concern:

* :mod:`lbbench.processes` -- starting, pinning, measuring and stopping child processes;
* :mod:`lbbench.configs` -- generated nginx / HAProxy configurations and payload files;
* :mod:`lbbench.targets` -- the proxies under test and how to launch them;
* :mod:`lbbench.cases` -- the load cases and which targets each loads;
* :mod:`lbbench.probe` -- tiny HTTP/1.1 and HTTP/2 clients that check a target before loading it;
* :mod:`lbbench.wrk` -- running wrk and parsing its results;
* :mod:`lbbench.h2load` -- running h2load (the HTTP/2 cases) and parsing its results;
* :mod:`lbbench.memory` -- the idle-connection memory case (TCP and HTTP/2);
* :mod:`lbbench.report` -- medians, ratios, the printed table and the JSON file;
* :mod:`lbbench.sysinfo` -- machine and tool versions recorded with the results.
"""
