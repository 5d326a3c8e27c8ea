"""The cipher a connection asks for first (AES-GCM), and that a server without it still connects."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollout.executors.ssh import SshExecutor
from tests.conftest_sshd import SshdServer, own_sshd

pytestmark = pytest.mark.ssh


def _cipher(executor: SshExecutor) -> str:
    transport = executor._transport()
    return str(transport.remote_cipher)  # type: ignore[attr-defined]  # set by the key exchange; not in the stubs


def test_an_openssh_server_is_spoken_to_in_aes_gcm(sshd: SshdServer) -> None:
    executor = SshExecutor(sshd.target("ssh-1"))
    try:
        assert executor.run("echo ok").stdout == "ok\n"
        assert _cipher(executor) == "aes128-gcm@openssh.com"
    finally:
        executor.close()


def test_a_server_without_aes_gcm_still_runs_commands(tmp_path: Path) -> None:
    with own_sshd(tmp_path / "sshd", extra_config=["Ciphers aes256-ctr"]) as server:
        executor = SshExecutor(server.target("ssh-1"))
        try:
            assert executor.run("echo ok").stdout == "ok\n"
            assert _cipher(executor) == "aes256-ctr"
        finally:
            executor.close()
