"""Executors: where plan commands run (this machine or an SSH host).

`open_executor` picks the implementation for a Target. The SSH executor is imported only
when an SSH target is opened: importing paramiko costs a quarter of a second, and local
plans (and `rollout --help`) must never pay it.
"""

from __future__ import annotations

from rollout.executors.base import (
    DEFAULT_OUTPUT_CAP,
    CommandResult,
    Executor,
    Target,
)

__all__ = ["CommandResult", "Executor", "Target", "open_executor"]


def open_executor(target: Target, *, output_cap: int = DEFAULT_OUTPUT_CAP) -> Executor:
    """Return an executor for `target`; SSH connects lazily, on first use."""
    if target.connection == "local":
        from rollout.executors.local import LocalExecutor

        return LocalExecutor(target, output_cap=output_cap)
    if target.connection == "ssh":
        from rollout.executors.ssh import SshExecutor

        return SshExecutor(target, output_cap=output_cap)
    raise ValueError(f"unknown connection kind: {target.connection!r}")
