"""The cipher a connection asks for first (AES-GCM), and that a server without it still connects."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollout.executors.ssh import SshExecutor
from tests.conftest_sshd import SshdServer, own_sshd

pytestmark = pytest.mark.ssh


def _speaks(server: SshdServer, cipher: str) -> None:
    """A command runs on `server`, over a connection that negotiated `cipher`."""
    executor = SshExecutor(server.target("ssh-1"))
    try:
        assert executor.run("echo ok").stdout == "ok\n"
        transport = executor._transport()
        # set by the key exchange; not in the stubs
        assert str(transport.remote_cipher) == cipher  # type: ignore[attr-defined]
    finally:
        executor.close()


def test_an_openssh_server_is_spoken_to_in_aes_gcm(sshd: SshdServer) -> None:
    _speaks(sshd, "aes128-gcm@openssh.com")


def test_a_server_without_aes_gcm_still_runs_commands(tmp_path: Path) -> None:
    with own_sshd(tmp_path / "sshd", extra_config=["Ciphers aes256-ctr"]) as server:
        _speaks(server, "aes256-ctr")
