"""
The benchmark harness's h2load parts (C{bench/lbbench}): h2load's output
parsed into numbers (a table of real outputs of h2load 1.52 captured on
this project's machine), its command line, the HTTP/2 server-preface check
of the idle-connection memory case, and the HTTP/2 report's per-core ratio
and summary line.
"""

# The captured h2load outputs are kept verbatim, long lines included.
# ruff: noqa: E501

from __future__ import annotations

import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

# The harness is a script directory, not an installed package.
BENCH = str(Path(__file__).resolve().parent.parent / "bench")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

from lbbench.cases import CASES_BY_NAME  # noqa: E402
from lbbench.h2load import (  # noqa: E402
    H2loadError,
    H2LoadSpec,
    expected_protocol,
    h2load_command,
    parse_output,
    summarise,
)
from lbbench.memory import (  # noqa: E402
    H2_ACK,
    H2_CLIENT_PREFACE,
    H2_SETTINGS,
    h2_frame,
    server_preface_state,
)
from lbbench.report import (  # noqa: E402
    CaseResult,
    Results,
    TargetStatus,
    format_case_tables,
)
from lbbench.targets import TARGETS_BY_NAME  # noqa: E402

# lbtwist-h2tls under h2load -t 1 -c 8 -m 16 -D 2 --npn-list=h2 https://...
LBTWIST_TLS = """\
starting benchmark...
spawning thread #0: 8 total client(s). Timing-based test with 0s of warm-up time and 2s of main duration for measurements.
Warm-up started for thread #0.
progress: 12% of clients started
progress: 25% of clients started
progress: 37% of clients started
progress: 50% of clients started
progress: 62% of clients started
progress: 75% of clients started
progress: 87% of clients started
progress: 100% of clients started
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
TLS Protocol: TLSv1.3
Cipher: TLS_AES_256_GCM_SHA384
Server Temp Key: X25519 253 bits
Application protocol: h2
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 2.00s, 6000.50 req/s, 791.91KB/s
requests: 12001 total, 12129 started, 12001 done, 12001 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 12001 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 1.55MB (1621831) total, 94.84KB (97120) headers (space savings 95.76%), 1.14MB (1200100) data
                     min         max         mean         sd        +/- sd
time for request:     6.32ms     42.09ms     20.86ms      4.89ms    79.29%
time for connect:     8.40ms     14.00ms     11.21ms      1.95ms    62.50%
time to 1st byte:    41.42ms     57.50ms     55.04ms      5.51ms    87.50%
req/s           :     719.69      847.24      749.76       45.86    87.50%
"""

# lbtwist-h2c under h2load -t 1 -c 8 -m 16 -D 2 http://...
LBTWIST_H2C = """\
starting benchmark...
spawning thread #0: 8 total client(s). Timing-based test with 0s of warm-up time and 2s of main duration for measurements.
Warm-up started for thread #0.
progress: 12% of clients started
progress: 25% of clients started
progress: 37% of clients started
progress: 50% of clients started
progress: 62% of clients started
progress: 75% of clients started
progress: 87% of clients started
progress: 100% of clients started
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Application protocol: h2c
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 2.00s, 6266.00 req/s, 826.91KB/s
requests: 12532 total, 12660 started, 12532 done, 12532 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 12532 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 1.62MB (1693516) total, 98.99KB (101368) headers (space savings 95.77%), 1.20MB (1253200) data
                     min         max         mean         sd        +/- sd
time for request:     1.88ms     42.55ms     20.16ms      4.72ms    84.74%
time for connect:       62us       167us       120us        36us    62.50%
time to 1st byte:    34.98ms     42.73ms     37.88ms      2.61ms    62.50%
req/s           :     766.46      808.36      781.68       14.31    62.50%
"""

# HAProxy 2.6 (bind proto h2, http-request return) under h2load -t 1 -c 2 -m 4 -D 1 http://...
HAPROXY_H2C = """\
starting benchmark...
spawning thread #0: 2 total client(s). Timing-based test with 0s of warm-up time and 1s of main duration for measurements.
Warm-up started for thread #0.
progress: 50% of clients started
progress: 100% of clients started
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Application protocol: h2c
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 1.00s, 76916.00 req/s, 2.86MB/s
requests: 76916 total, 76924 started, 76916 done, 76916 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 76916 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 2.86MB (2999784) total, 1.17MB (1230656) headers (space savings 65.96%), 375.57KB (384580) data
                     min         max         mean         sd        +/- sd
time for request:       29us      5.60ms        85us       242us    99.49%
time for connect:     2.64ms      2.69ms      2.66ms        31us   100.00%
time to 1st byte:     2.94ms      3.23ms      3.08ms       209us   100.00%
req/s           :   38263.95    38497.08    38380.52      164.85   100.00%
"""

# lbtwist's TLS listener with h2load offering only http/1.1 (--npn-list=http/1.1)
LBTWIST_TLS_HTTP1 = """\
starting benchmark...
spawning thread #0: 1 total client(s). Timing-based test with 0s of warm-up time and 1s of main duration for measurements.
Warm-up started for thread #0.
progress: 100% of clients started
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
TLS Protocol: TLSv1.3
Cipher: TLS_AES_256_GCM_SHA384
Server Temp Key: X25519 253 bits
Application protocol: http/1.1
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 1.00s, 4460.00 req/s, 1.40MB/s
requests: 4460 total, 4461 started, 4460 done, 4460 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 4460 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 1.40MB (1462880) total, 788.52KB (807441) headers (space savings 0.00%), 435.64KB (446100) data
                     min         max         mean         sd        +/- sd
time for request:      150us      7.77ms       222us       368us    97.78%
time for connect:     5.02ms      5.02ms      5.02ms         0us   100.00%
time to 1st byte:     5.59ms      5.59ms      5.59ms         0us   100.00%
req/s           :    4459.55     4459.55     4459.55        0.00   100.00%
"""

# h2load -D 1 http://127.0.0.1:1/small: nothing listens
REFUSED = """\
starting benchmark...
spawning thread #0: 1 total client(s). Timing-based test with 0s of warm-up time and 1s of main duration for measurements.
Warm-up started for thread #0.
progress: 100% of clients started
Warm-up phase is over for thread #0.
Main benchmark duration is started for thread #0.
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 1.00s, 0.00 req/s, 0B/s
requests: 0 total, 0 started, 0 done, 0 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 0B (0) total, 0B (0) headers (space savings 0.00%), 0B (0) data
                     min         max         mean         sd        +/- sd
time for request:        0us         0us         0us         0us     0.00%
time for connect:        0us         0us         0us         0us     0.00%
time to 1st byte:        0us         0us         0us         0us     0.00%
req/s           :       0.00        0.00        0.00        0.00   100.00%
"""


class ParseOutputTests(SynchronousTestCase):
    """
    L{parse_output} reads h2load's summary block into numbers.
    """

    def test_table(self) -> None:
        """
        Each captured output gives its duration, request and status counts,
        wire and body bytes, request times in microseconds and the protocol
        the connections spoke (h2 over TLS, h2c in cleartext).
        """
        table = [
            (LBTWIST_TLS, {
                "duration_s": 2.0, "reported_requests_per_s": 6000.5, "total": 12001,
                "started": 12129, "done": 12001, "succeeded": 12001, "failed": 0, "errored": 0,
                "timeout": 0, "s2xx": 12001, "s3xx": 0, "s4xx": 0, "s5xx": 0,
                "total_bytes": 1621831, "headers_bytes": 97120, "data_bytes": 1200100,
                "request_min_us": 6320.0, "request_max_us": 42090.0, "request_mean_us": 20860.0,
                "request_sd_us": 4890.0, "protocol": "h2", "tls_version": "TLSv1.3",
                "tls_cipher": "TLS_AES_256_GCM_SHA384",
            }),
            (LBTWIST_H2C, {
                "duration_s": 2.0, "reported_requests_per_s": 6266.0, "total": 12532,
                "started": 12660, "done": 12532, "succeeded": 12532, "failed": 0, "errored": 0,
                "timeout": 0, "s2xx": 12532, "s3xx": 0, "s4xx": 0, "s5xx": 0,
                "total_bytes": 1693516, "headers_bytes": 101368, "data_bytes": 1253200,
                "request_min_us": 1880.0, "request_max_us": 42550.0, "request_mean_us": 20160.0,
                "request_sd_us": 4720.0, "protocol": "h2c",
            }),
            (HAPROXY_H2C, {
                "duration_s": 1.0, "reported_requests_per_s": 76916.0, "total": 76916,
                "started": 76924, "done": 76916, "succeeded": 76916, "failed": 0, "errored": 0,
                "timeout": 0, "s2xx": 76916, "s3xx": 0, "s4xx": 0, "s5xx": 0,
                "total_bytes": 2999784, "headers_bytes": 1230656, "data_bytes": 384580,
                "request_min_us": 29.0, "request_max_us": 5600.0, "request_mean_us": 85.0,
                "request_sd_us": 242.0, "protocol": "h2c",
            }),
            (LBTWIST_TLS_HTTP1, {"done": 4460, "protocol": "http/1.1", "tls_version": "TLSv1.3"}),
            (REFUSED, {"done": 0, "total_bytes": 0, "request_mean_us": 0.0, "protocol": None}),
        ]  # fmt: skip
        for output, expected in table:
            parsed = parse_output(output)
            self.assertEqual({key: parsed.get(key) for key in expected}, expected)

    def test_bytesFormat(self) -> None:
        """
        The traffic line of h2load versions that print plain byte counts
        ("N bytes total", as nghttp2's documentation shows) reads the same.
        """
        output = LBTWIST_H2C.replace(
            "traffic: 1.62MB (1693516) total, 98.99KB (101368) headers (space savings 95.77%), "
            "1.20MB (1253200) data",
            "traffic: 1693516 bytes total, 101368 bytes headers (space savings 95.77%), "
            "1253200 bytes data",
        )
        self.assertNotEqual(output, LBTWIST_H2C)
        parsed = parse_output(output)
        self.assertEqual(
            (parsed["total_bytes"], parsed["headers_bytes"], parsed["data_bytes"]),
            (1693516, 101368, 1253200),
        )

    def test_incomplete(self) -> None:
        """
        Output without the summary (h2load refusing an option, killed
        early) is an L{H2loadError} naming what is missing.
        """
        for output in ("/usr/bin/h2load: unrecognized option '--alpn-list=h2'\n",
                       LBTWIST_H2C.split("time for request")[0]):
            with self.assertRaises(H2loadError) as caught:
                parse_output(output)
            self.assertIn("no complete summary", str(caught.exception))
        with self.assertRaises(H2loadError) as caught:
            parse_output(LBTWIST_H2C.split("time for request")[0])
        self.assertIn("request_mean_us", str(caught.exception))


class SummariseTests(SynchronousTestCase):
    """
    L{summarise} derives the reported figures from a parsed summary.
    """

    def test_rates(self) -> None:
        """
        Requests per second are the requests done over the measured
        duration; MiB/s counts every byte on the wire; times are in ms.
        """
        run = summarise(parse_output(LBTWIST_H2C), 97.0)
        self.assertAlmostEqual(run.requests_per_s, 6266.0)
        self.assertAlmostEqual(run.mib_per_s, 1693516 / 2.0 / (1024 * 1024))
        self.assertAlmostEqual(run.mean_ms, 20.16)
        self.assertAlmostEqual(run.max_ms, 42.55)
        self.assertEqual(run.proxy_cpu_percent, 97.0)
        self.assertEqual((run.socket_errors, run.status_errors), (0, 0))

    def test_errors(self) -> None:
        """
        Streams that errored (reset, connection lost) or timed out are
        socket errors; 4xx and 5xx answers are status errors.
        """
        output = LBTWIST_H2C.replace(
            "12532 succeeded, 0 failed, 0 errored, 0 timeout",
            "12520 succeeded, 12 failed, 3 errored, 2 timeout",
        ).replace("12532 2xx, 0 3xx, 0 4xx, 0 5xx", "12520 2xx, 0 3xx, 4 4xx, 3 5xx")
        self.assertEqual(output.count("4 4xx"), 1)
        self.assertEqual(output.count("3 errored"), 1)
        run = summarise(parse_output(output), None)
        self.assertEqual((run.socket_errors, run.status_errors), (5, 7))


class CommandTests(SynchronousTestCase):
    """
    L{h2load_command} builds a bounded, single-threaded h2load run.
    """

    def test_cleartext(self) -> None:
        """
        An h2c run asks for the URL over http (h2load's prior knowledge)
        with the connections, streams and whole seconds given.
        """
        load = H2LoadSpec("/small", "http", 2.6, 8, 16)
        self.assertEqual(
            h2load_command("/usr/bin/h2load", 4242, load),
            ["/usr/bin/h2load", "-t", "1", "-c", "8", "-m", "16", "-D", "3",
             "http://127.0.0.1:4242/small"],
        )  # fmt: skip
        self.assertEqual(expected_protocol("http"), "h2c")

    def test_tls(self) -> None:
        """
        A TLS run offers only h2 by ALPN, so that a server choosing
        HTTP/1.1 cannot pass for an HTTP/2 result.
        """
        argv = h2load_command("h2load", 4242, H2LoadSpec("/small", "https", 0.2, 1, 1))
        self.assertEqual(argv[-3:], ["1", "--npn-list=h2", "https://127.0.0.1:4242/small"])
        self.assertEqual(expected_protocol("https"), "h2")


class ServerPrefaceTests(SynchronousTestCase):
    """
    L{server_preface_state} tells whether a server's first bytes open an
    HTTP/2 server preface (a SETTINGS frame that is not an ACK).
    """

    def test_table(self) -> None:
        """
        A whole SETTINGS frame (empty, or with settings, followed by more
        frames or not) is True; an ACK, another frame type, HTTP/1.1 bytes
        or a payload that is no list of 6-byte settings is False; too few
        bytes to tell is None.
        """
        settings = h2_frame(H2_SETTINGS, payload=bytes.fromhex("000300000064000400010000"))
        table = [
            (b"", None),
            (h2_frame(H2_SETTINGS)[:8], None),
            (h2_frame(H2_SETTINGS), True),
            (settings, True),
            (settings[:-1], None),
            (settings + h2_frame(0x8, payload=b"\x00\x0f\x00\x01"), True),
            (h2_frame(H2_SETTINGS, H2_ACK), False),
            (h2_frame(0x7, payload=bytes(8)), False),
            (b"HTTP/1.1 400 Bad Request\r\n", False),
            (h2_frame(H2_SETTINGS, payload=bytes(5)), False),
        ]
        for received, expected in table:
            self.assertIs(server_preface_state(received), expected, received)

    def test_clientPreface(self) -> None:
        """
        The client's preface is the fixed 24-byte string followed by an
        empty SETTINGS frame on stream 0.
        """
        self.assertEqual(
            H2_CLIENT_PREFACE,
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00",
        )


class ReportTests(SynchronousTestCase):
    """
    The HTTP/2 case's table and summary compare lbtwist with HAProxy of
    the same kind per core.
    """

    def results(self, lbtwistCpu: float) -> Results:
        """
        Results of the h2-small case: HAProxy h2c from its captured run at
        50 % CPU, lbtwist h2c from its captured run at C{lbtwistCpu}.
        """
        case = CASES_BY_NAME["h2-small"]
        specs = [TARGETS_BY_NAME["haproxy-h2c"], TARGETS_BY_NAME["lbtwist-h2c"],
                 TARGETS_BY_NAME["lbtwist-http"]]
        results = Results(specs, [case])
        for spec in specs:
            results.statuses[spec.name] = TargetStatus(status="ok")
        results.case_results["h2-small"] = {
            "haproxy-h2c": CaseResult(runs=[summarise(parse_output(HAPROXY_H2C), 50.0)]),
            "lbtwist-h2c": CaseResult(runs=[summarise(parse_output(LBTWIST_H2C), lbtwistCpu)]),
        }
        return results

    def test_perCoreRatio(self) -> None:
        """
        The ratio is requests per CPU-second against HAProxy's: 6,266 req/s
        at 20 % against 76,916 at 50 %.
        """
        results = self.results(20.0)
        case = CASES_BY_NAME["h2-small"]
        self.assertAlmostEqual(
            results.per_core_ratio(case, "lbtwist-h2c", "haproxy-h2c"),
            (6266.0 / 0.2) / (76916.0 / 0.5),
        )

    def test_table(self) -> None:
        """
        The table lists only the HTTP/2 targets, with mean and max request
        times and the per-core ratio; the summary line says whether the
        0.4x target is met.
        """
        text = format_case_tables(self.results(20.0))
        self.assertIn("lbtwist-h2c         6,266", text)
        self.assertNotIn("lbtwist-http", text.split("Medians")[0])
        self.assertIn("0.20x", text)
        self.assertIn("h2-small: lbtwist-h2c / haproxy-h2c per core = 0.20x "
                      "(target >= 0.40x: NOT met)", text)
        met = format_case_tables(self.results(10.0))
        self.assertIn("per core = 0.41x (target >= 0.40x: met)", met)
