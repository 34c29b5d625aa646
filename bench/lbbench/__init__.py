"""Helpers for the lbtwist benchmark harness (``bench/bench.py``).

The package is split by concern:

* :mod:`lbbench.processes` -- starting, pinning, measuring and stopping child processes;
* :mod:`lbbench.configs` -- generated nginx / HAProxy configurations and payload files;
* :mod:`lbbench.targets` -- the proxies under test and how to launch them;
* :mod:`lbbench.probe` -- a tiny HTTP client used to check a target before loading it;
* :mod:`lbbench.wrk` -- running wrk and parsing its results;
* :mod:`lbbench.memory` -- the idle-connection memory case;
* :mod:`lbbench.report` -- medians, ratios, the printed table and the JSON file;
* :mod:`lbbench.sysinfo` -- machine and tool versions recorded with the results.
"""
