"""The ``oubli`` command: holds SIGTERM and SIGINT before the CLI's imports (worker.shutdown says why)."""

from __future__ import annotations


def main() -> None:
    from worker import shutdown

    shutdown.hold()
    try:
        from worker.cli import main as cli_main

        cli_main()
    finally:
        shutdown.release_held()  # a command that ended before it was known (--help, a usage error) still gets it
