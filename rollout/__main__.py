"""python -m rollout"""

import atexit
import contextlib
import os
import sys
import threading


def main() -> None:
    """Console entry point."""
    from rollout.cli import run_cli

    code = run_cli()
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)  # the interpreter's exit waits for them, as it always did
    # Everything the command owes is written by now (journal and head fsynced, report and
    # records written and closed). Tearing the interpreter down after a 100-host run
    # (finalising paramiko's transports and the run's objects) took 0.15 s more on the
    # operator's clock; with no thread left to wait for, run the exit handlers (coverage,
    # a wrapper's own), flush what Python buffers and leave.
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        # a closed pipe: what it missed cannot be delivered now
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
