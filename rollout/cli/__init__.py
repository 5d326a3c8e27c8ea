"""The command-line interface: wiring, terminal output and exit codes.

The only package that prints. Commands live in one module per area and register on
the shared typer app; `run_cli` maps every outcome and exception to an ExitStatus.
"""

from rollout.cli.app import run_cli

__all__ = ["run_cli"]
