"""
C{python -m lbtwist.check [twistd lb options]}: check that C{twistd lb}
would start with these options, with the code and configuration now on
disk, and start nothing.

A master re-executing itself runs it first (see
L{lbtwist.workers._handover}): a problem is one line naming the key, and
exit status 1; all good is exit status 0 and no output.  Operators may run
it too, before a restart.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    """
    Check the C{twistd lb} options C{argv} (default: the command line) as a
    starting balancer would, and exit: 1 with the reason on one line on the
    standard error, or 0.
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

        tap.Options().parseOptions(args)
    except SystemExit as e:
        if e.code not in (None, 0):
            sys.stderr.write(f"{e.code}\n")
            sys.exit(1)
    except Exception as e:
        sys.stderr.write(f"{type(e).__name__}: {e}\n")
        sys.exit(1)
    sys.exit(0)


if __name__ == "__main__":
    main()
