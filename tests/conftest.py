"""Shared fixtures: the real sshd fixture lives in tests/conftest_sshd.py."""

pytest_plugins = ["tests.conftest_sshd"]
