"""Imports every command module so that each registers on the app."""

from rollout.cli import demo_cmd, metadata_cmds, plan_cmds, report_cmds, run_cmds  # noqa: F401
