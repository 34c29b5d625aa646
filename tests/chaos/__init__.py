"""
The chaos suite: lbtwist under faults, abuse and load.

Backends are separate processes (L{lbtwist.testing.backend}) that the tests
kill with C{SIGKILL} or freeze with C{SIGSTOP}; clients are blocking
sockets in threads that classify every outcome (complete response, error
status, truncated, closed, hang); each scenario asserts a measured outcome.
L{tests.chaos.tools} holds the harness.  The long runs are in C{soak/}.
"""
