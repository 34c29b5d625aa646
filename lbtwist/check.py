"""
C{python -m lbtwist.check [twistd lb options]}: check that C{twistd lb}
would start with these options, with the code and configuration now on
disk, and start nothing.

A master re-executing itself runs it first (see
L{lbtwist.workers._handover}): a problem is one line naming the key, and
exit status 1; all good is exit status 0 and one line on the standard
output (C{lbtwist: configuration OK: 1 listener, 1 pool, 3 backends}), which
the master ignores.  Operators may run it too, before a restart.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

PROGRAM = "python -m lbtwist.check"


def main(argv: Sequence[str] | None = None) -> None:
    """
    Check the C{twistd lb} options C{argv} (default: the command line) as a
    starting balancer would, and exit: 1 with the reason on one line on the
    standard error, or 0 after one line on the standard output saying what
    was checked (C{--help}: the usage, naming this program, and 0).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if "LISTEN_FDS" in os.environ:
        # Sockets systemd passed a master (socket activation): their names
        # are checked as its start checked them, as if passed here (the
        # sockets stay the master's).  Twisted reads this when its
        # endpoints module is imported, below.
        os.environ["LISTEN_PID"] = str(os.getpid())
    try:
        from lbtwist import app, tap  # noqa: F401 (the code on disk imports)

        options = tap.Options()
        # Run alone, not under twistd, the usage names this program.
        options.synopsis = f"Usage: {PROGRAM} {options.synopsis}"
        options.program = PROGRAM
        options.parseOptions(args)
    except SystemExit as e:
        if e.code not in (None, 0):
            sys.stderr.write(f"{e.code}\n")
            sys.exit(1)
        sys.exit(0)
    except Exception as e:
        sys.stderr.write(f"{type(e).__name__}: {e}\n")
        sys.exit(1)
    from lbtwist.wording import counted

    config = options["lbconfig"]
    sys.stdout.write(
        f"lbtwist: configuration OK: {counted(len(config.listeners), 'listener')}, "
        f"{counted(len(config.pools), 'pool')}, "
        f"{counted(sum(len(p.backends) for p in config.pools), 'backend')}\n")
    sys.exit(0)


if __name__ == "__main__":
    main()
