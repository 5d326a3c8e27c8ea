"""Imports every command module so that each registers on the app."""

from rollout.cli import (  # noqa: F401
    demo_cmd,
    gate_cmds,
    history_cmds,
    lock_cmds,
    metadata_cmds,
    parity_cmds,
    plan_cmds,
    report_cmds,
    run_cmds,
    trust_cmds,
)
