"""Hosts behind a bastion: ProxyJump and ProxyCommand against real sshd servers.

The inner sshd listens on 127.0.0.2 only, and every test reaches it through the jump sshd
on 127.0.0.1 (ProxyJump in a temporary ssh config) or through a proxy command. That the
jump host really carries the connection is shown by a jump host that forbids forwarding:
the same plan then fails, naming the jump host.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import paramiko
import pytest

from rollout.errors import ConnectError
from rollout.executors.base import Target
from rollout.executors.ssh import SshExecutor
from rollout.executors.ssh_config import (
    expand_tokens,
)
from rollout.executors.ssh_connect import ProxyProcess, open_stream
from tests.conftest_sshd import SSHD, SshdServer, free_port, start_sshd, stop_sshd
from tests.helpers import Cli, kill_pidfile, pid_alive, wait_for_file

pytestmark = pytest.mark.ssh


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, SshdServer]]:
    """jump (127.0.0.1), jump2 (127.0.0.3), closed (a jump host that forbids forwarding), inner (127.0.0.2)."""
    if not os.path.exists(SSHD):
        pytest.skip(f"{SSHD} is not installed (Debian package openssh-server)")
    with tempfile.TemporaryDirectory(prefix="rollout-bastion-") as tmp:
        started: dict[str, SshdServer] = {}
        try:
            started["jump"] = start_sshd(Path(tmp, "jump"))
            started["jump2"] = start_sshd(Path(tmp, "jump2"), host="127.0.0.3")
            started["closed"] = start_sshd(Path(tmp, "closed"), extra_config=["AllowTcpForwarding no"])
            started["inner"] = start_sshd(Path(tmp, "inner"), host="127.0.0.2")
            yield started
        finally:
            for server in started.values():
                stop_sshd(server)


def _host_block(alias: str, server: SshdServer, known_hosts: str, extra: str = "") -> str:
    return f"""\
Host {alias}
    HostName {server.host}
    Port {server.port}
    User {server.user}
    IdentityFile {server.identity_file}
    IdentitiesOnly yes
    UserKnownHostsFile {known_hosts}
    ConnectTimeout 5
{extra}"""


def _config(
    tmp_path: Path, servers: dict[str, SshdServer], *, inner_known: str | None = None, jump_known: str | None = None
) -> Path:
    """inner via jump; inner2 via jump,jump2; blocked via closed; all keys known unless overridden."""
    inner, jump = servers["inner"], servers["jump"]
    config = tmp_path / "ssh_config"
    config.write_text(
        "\n".join(
            [
                _host_block("inner", inner, inner_known or inner.known_hosts, "    ProxyJump jump\n"),
                _host_block("inner2", inner, inner.known_hosts, "    ProxyJump jump,jump2\n"),
                _host_block("blocked", inner, inner.known_hosts, "    ProxyJump closed\n"),
                _host_block("jump", jump, jump_known or jump.known_hosts),
                _host_block("jump2", servers["jump2"], servers["jump2"].known_hosts),
                _host_block("closed", servers["closed"], servers["closed"].known_hosts),
            ]
        )
    )
    config.chmod(0o600)
    return config


def _plan(tmp_path: Path, config: Path, host: str = "inner", *, fail: bool = False, host_extra: str = "") -> Path:
    """Two steps on one host: the first leaves a marker, the second fails when asked; rollbacks leave markers."""
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"""\
name: bastion
environments:
  lab:
    rehearsal: true
    connection: ssh
    ssh: {{ config: {config} }}
    hosts:
      {host}: {{ {host_extra} }}
steps:
  - name: first
    run: touch {tmp_path}/first.done
    rollback: touch {tmp_path}/first.undone
  - name: second
    run: "{"false" if fail else "true"}"
    rollback: "true"
"""
    )
    return plan


def _run(cli: Cli, plan: Path, tmp_path: Path) -> tuple[int, str]:
    result = cli("run", str(plan), "--env", "lab", "--state-dir", str(tmp_path / "state"))
    return result.code, result.out + result.err


def _empty(tmp_path: Path) -> str:
    path = tmp_path / "known_hosts_empty"
    path.write_text("")
    return str(path)


# --- ProxyJump: runs, rollbacks and refusals ----------------------------------------------


def test_a_run_through_the_bastion_succeeds(tmp_path: Path, servers: dict[str, SshdServer], cli: Cli) -> None:
    code, out = _run(cli, _plan(tmp_path, _config(tmp_path, servers)), tmp_path)

    assert code == 0, out
    assert (tmp_path / "first.done").exists()


def test_a_failing_run_is_rolled_back_through_the_bastion(
    tmp_path: Path, servers: dict[str, SshdServer], cli: Cli
) -> None:
    code, out = _run(cli, _plan(tmp_path, _config(tmp_path, servers), fail=True), tmp_path)

    assert code == 1, out
    assert (tmp_path / "first.undone").exists()


def test_a_jump_host_that_forbids_forwarding_is_named_and_nothing_runs(
    tmp_path: Path, servers: dict[str, SshdServer], cli: Cli
) -> None:
    # The same inner host, directly reachable from here, fails through this jump host: the path is the jump.
    code, out = _run(cli, _plan(tmp_path, _config(tmp_path, servers), host="blocked"), tmp_path)

    inner = servers["inner"]
    assert code == 3, out
    assert f"closed could not reach 127.0.0.2:{inner.port}: " in " ".join(out.split())
    assert not (tmp_path / "first.done").exists()


def test_an_unknown_inner_host_key_is_refused_before_any_command(
    tmp_path: Path, servers: dict[str, SshdServer], cli: Cli
) -> None:
    config = _config(tmp_path, servers, inner_known=_empty(tmp_path))

    code, out = _run(cli, _plan(tmp_path, config), tmp_path)

    flat = " ".join(out.split())
    assert code == 3, out
    assert f"refusing to connect to inner via jump: the host key of 127.0.0.2:{servers['inner'].port}" in flat
    assert not (tmp_path / "first.done").exists()


def test_an_unknown_jump_host_key_is_refused_naming_the_jump_host(
    tmp_path: Path, servers: dict[str, SshdServer], cli: Cli
) -> None:
    empty = _empty(tmp_path)
    config = _config(tmp_path, servers, jump_known=empty)

    code, out = _run(cli, _plan(tmp_path, config), tmp_path)

    flat = " ".join(out.split())
    jump = servers["jump"]
    assert code == 3, out
    assert f"refusing to connect to inner via jump: the host key of jump host jump (127.0.0.1:{jump.port})" in flat
    assert f"is not in {empty}" in flat
    assert not (tmp_path / "first.done").exists()


def test_a_jump_host_refusing_the_connection_is_named(tmp_path: Path, servers: dict[str, SshdServer]) -> None:
    port = free_port()
    jump = Target(name="bastion", connection="ssh", address="127.0.0.1", port=port, connect_timeout=5.0)
    target = servers["inner"].target("web-1", jumps=(jump,))

    with pytest.raises(ConnectError) as caught:
        open_stream(target)

    assert str(caught.value) == (
        f"web-1: connection refused by jump host bastion (127.0.0.1:{port}) (is sshd running on that port?)"
    )


def test_a_host_the_jump_host_cannot_reach_is_named_with_the_jump_host(servers: dict[str, SshdServer]) -> None:
    port = free_port("127.0.0.2")  # nothing listens there
    target = _inner_through_jump(servers, port=port)

    with pytest.raises(ConnectError) as caught:
        open_stream(target)

    assert str(caught.value).startswith(f"inner: jump could not reach 127.0.0.2:{port}: ")


def test_two_jump_hosts_in_a_row(tmp_path: Path, servers: dict[str, SshdServer], cli: Cli) -> None:
    code, out = _run(cli, _plan(tmp_path, _config(tmp_path, servers), host="inner2"), tmp_path)

    assert code == 0, out
    assert (tmp_path / "first.done").exists()


def test_the_plans_proxy_jump_wins_over_the_config_and_none_disables_it(
    tmp_path: Path, servers: dict[str, SshdServer], cli: Cli
) -> None:
    config = _config(tmp_path, servers)

    # inner's config goes through jump; the plan sends it through the forbidding jump host instead...
    code, out = _run(cli, _plan(tmp_path, config, host_extra="proxy_jump: closed"), tmp_path)
    assert code == 3, out
    assert "closed could not reach" in " ".join(out.split())

    # ...and `none` connects directly (127.0.0.2 is reachable from here, unlike on a real network).
    code, out = _run(cli, _plan(tmp_path, config, host_extra="proxy_jump: none"), tmp_path)
    assert code == 0, out


# --- the connection's life: hop clients closed, reconnect after a drop ----------------------


def _inner_through_jump(servers: dict[str, SshdServer], **overrides: object) -> Target:
    jump = servers["jump"].target("jump")
    return servers["inner"].target("inner", jumps=(jump,), **overrides)


def test_closing_the_executor_closes_the_jump_host_connections(servers: dict[str, SshdServer]) -> None:
    executor = SshExecutor(_inner_through_jump(servers))
    assert executor.run("true").ok
    route = executor._route
    assert route is not None
    assert len(route.jump_clients) == 1
    jump_transport = route.jump_clients[0].get_transport()
    assert jump_transport is not None
    assert jump_transport.is_active()

    executor.close()

    assert not jump_transport.is_active()
    executor.close()  # twice is fine


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (an sshd's per-connection sessions)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def test_when_the_connection_drops_its_jump_host_connection_is_closed(servers: dict[str, SshdServer]) -> None:
    executor = SshExecutor(_inner_through_jump(servers))
    try:
        assert executor.run("true").ok
        route, client = executor._route, executor._client
        assert route is not None
        assert client is not None
        jump_transport = route.jump_clients[0].get_transport()
        final = client.get_transport()
        assert jump_transport is not None
        assert final is not None

        # The host drops the connection (its sshd session dies); the bastion's session is still up.
        for pid in _children(servers["inner"].process.pid):
            os.kill(pid, signal.SIGKILL)
        final.join(10)
        assert not final.is_active()

        jump_transport.join(10)
        assert not jump_transport.is_active()
        assert executor.run("echo again").stdout == "again\n"  # through the jump host again
    finally:
        executor.close()


def test_a_command_cut_off_behind_a_jump_is_killed_on_reconnect(servers: dict[str, SshdServer], tmp_path: Path) -> None:
    executor = SshExecutor(_inner_through_jump(servers))
    pidfile = tmp_path / "sleep.pid"
    outcome: list[bool] = []
    runner = threading.Thread(
        target=lambda: outcome.append(
            executor.run(
                f"sleep 60 & echo $! > {pidfile}.tmp && mv {pidfile}.tmp {pidfile}; wait", timeout=30
            ).connection_lost
        )
    )
    runner.start()
    try:
        pid = int(wait_for_file(pidfile))
        # The bastion's side of the route drops: everything behind it is cut off.
        route = executor._route
        assert route is not None
        jump_transport = route.jump_clients[0].get_transport()
        assert jump_transport is not None
        jump_transport.close()
        runner.join(30)
        assert outcome == [True]
        assert pid_alive(pid), "the command runs on until the next connection ends it"

        assert executor.run("true").ok

        assert not pid_alive(pid)
    finally:
        executor.close()
        runner.join(10)
        kill_pidfile(pidfile)


# --- open_stream: a verified route without logging in to the host ---------------------------


def test_open_stream_reaches_the_inner_host_key_through_the_jump(servers: dict[str, SshdServer]) -> None:
    inner = servers["inner"]
    stream, close = open_stream(_inner_through_jump(servers))
    try:
        transport = paramiko.Transport(stream)
        transport.start_client(timeout=10)
        key = transport.get_remote_server_key()
        transport.close()
    finally:
        close()

    expected = (inner.workdir / "ssh_host_ed25519_key.pub").read_text().split()[1]
    assert key.get_base64() == expected


# --- ProxyCommand ------------------------------------------------------------------------------


def _proxies(marker: str) -> list[str]:
    """Command lines of live processes naming `marker` (zombies count: they were not reaped)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path("/proc", pid, "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path("/proc", pid, "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline or (state == "Z" and marker in Path("/proc", pid, "comm").read_text(errors="replace")):
            found.append(f"{pid}: {cmdline}")
    return found


@pytest.mark.parametrize("where", ["plan", "config"])
def test_a_run_through_a_proxy_command_leaves_no_proxy_process(
    tmp_path: Path, servers: dict[str, SshdServer], cli: Cli, where: str
) -> None:
    config = _config(tmp_path, servers)
    proxy = f"ssh -F {config} -o BatchMode=yes -W %h:%p jump"
    if where == "config":
        inner = servers["inner"]
        with config.open("a") as handle:
            handle.write(_host_block("viaproxy", inner, inner.known_hosts, f"    ProxyCommand {proxy}\n"))
        plan = _plan(tmp_path, config, host="viaproxy")
    else:
        plan = _plan(tmp_path, config, host_extra=f'proxy_command: "{proxy}"')

    code, out = _run(cli, plan, tmp_path)

    assert code == 0, out
    assert (tmp_path / "first.done").exists()
    assert _proxies(str(config)) == []


def test_a_proxy_command_that_fails_is_reported_with_its_stderr(
    tmp_path: Path, servers: dict[str, SshdServer], cli: Cli
) -> None:
    plan = _plan(tmp_path, _config(tmp_path, servers), host_extra="proxy_command: 'sh -c \"echo no route >&2\"'")

    code, out = _run(cli, plan, tmp_path)

    assert code == 3, out
    flat = " ".join(out.split())
    # Whether paramiko first sees the closed pipe or the end of output, the command and its words are named.
    assert '(through proxy command `sh -c "echo no route >&2"`, which said: no route)' in flat
    assert not (tmp_path / "first.done").exists()


def test_closing_the_executor_ends_the_proxy_process_and_what_it_started(
    servers: dict[str, SshdServer], tmp_path: Path
) -> None:
    relay, pidfile = tmp_path / "relay.py", tmp_path / "helper.pid"
    relay.write_text(_RELAY)
    # The command leaves a helper running beside the relay, as wrapper scripts do.
    proxy = f'sh -c \'sleep 300 & echo $! > {pidfile}; exec python3 {relay} "$0" "$1"\' %h %p'
    target = servers["inner"].target("inner")
    executor = SshExecutor(replace(target, proxy_command=expand_tokens(proxy, target)))
    try:
        assert executor.run("echo hi").stdout == "hi\n"
        assert _proxies(str(relay))
        helper = int(wait_for_file(pidfile))

        executor.close()

        assert _proxies(str(relay)) == []
        assert not pid_alive(helper)
    finally:
        executor.close()
        kill_pidfile(pidfile)


def test_when_the_connection_drops_the_proxy_process_ends(servers: dict[str, SshdServer], tmp_path: Path) -> None:
    marker = f"rollout-relay-{tmp_path.name}"
    target = servers["inner"].target("inner")
    relay = f"{subprocess.list2cmdline(['python3', '-c', _RELAY])} %h %p {marker}"
    executor = SshExecutor(replace(target, proxy_command=expand_tokens(relay, target)))
    try:
        assert executor.run("true").ok
        client = executor._client
        assert client is not None
        final = client.get_transport()
        assert final is not None
        route = executor._route
        assert route is not None
        stream = route.stream
        assert isinstance(stream, ProxyProcess)

        final.close()

        stream.process.wait(timeout=10)
        assert _proxies(marker) == []
    finally:
        executor.close()


#: A minimal ProxyCommand: relay stdin/stdout to host:port.
_RELAY = """
import os, socket, sys, threading
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
def up():
    while data := os.read(0, 65536):
        s.sendall(data)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
while data := s.recv(65536):
    os.write(1, data)
"""


# --- rollout plan shows the real path -----------------------------------------------------------


def test_plan_shows_the_jump_hosts_and_the_proxy_command(
    tmp_path: Path, servers: dict[str, SshdServer], cli: Cli
) -> None:
    config = _config(tmp_path, servers)
    inner, jump, jump2 = servers["inner"], servers["jump"], servers["jump2"]
    plan = _plan(tmp_path, config, host="inner2")

    text = cli("plan", str(plan), "--env", "lab")
    data = cli("plan", str(plan), "--env", "lab", "--json")

    assert text.code == 0, text.out + text.err
    flat = " ".join(text.out.split())
    assert f"ssh {inner.user}@127.0.0.2:{inner.port}" in flat
    assert (
        f"via jump {jump.user}@127.0.0.1:{jump.port} (key {jump.identity_file} only, known_hosts {jump.known_hosts})"
        in flat
    )
    assert f"jump2 {jump2.user}@127.0.0.3:{jump2.port}" in flat
    target = data.json()["hosts"]["inner2"]["target"]
    assert [j["name"] for j in target["jumps"]] == ["jump", "jump2"]
    assert (target["jumps"][0]["address"], target["jumps"][0]["port"]) == ("127.0.0.1", jump.port)
    assert target["jumps"][1]["known_hosts"] == jump2.known_hosts
    assert "jumps" not in target["jumps"][1]  # each hop once, in order
    assert target["proxy_command"] is None

    proxied = cli("plan", str(_plan(tmp_path, config, host_extra="proxy_command: nc %h %p")), "--env", "lab")
    assert f"via proxy command `nc 127.0.0.2 {inner.port}`" in " ".join(proxied.out.split())


# --- trust through a bastion ----------------------------------------------------------------


def test_trust_lists_the_jump_host_first_and_reaches_the_inner_host_through_it(
    tmp_path: Path, servers: dict[str, SshdServer], cli: Cli
) -> None:
    """Invariant: trust reaches a host the way a run does, and never through a jump host it does not yet trust."""
    known = tmp_path / "known_hosts_shared"
    known.write_text("")
    config = _config(tmp_path, servers, inner_known=str(known), jump_known=str(known))
    plan = _plan(tmp_path, config)
    trust = ("trust", "lab", "--plan", str(plan), "--yes")

    first = cli(*trust)
    out = " ".join((first.out + first.err).split())
    assert first.code == 3, out  # the inner host cannot be reached through a jump host not yet trusted
    jump_line, inner_line = (f"[{s.host}]:{s.port}" for s in (servers["jump"], servers["inner"]))
    assert known.read_text().split()[0] == jump_line
    assert inner_line not in known.read_text()
    assert "not in" in out

    second = cli(*trust)
    assert second.code == 0, second.out + second.err
    assert [line.split()[0] for line in known.read_text().splitlines()] == [jump_line, inner_line]

    code, run_out = _run(cli, plan, tmp_path)
    assert code == 0, run_out
    assert (tmp_path / "first.done").exists()


def test_the_pin_covers_the_jump_hosts(tmp_path: Path, servers: dict[str, SshdServer]) -> None:
    """Invariant: a lock reviewed for one route does not admit a run over another bastion."""
    from rollout.api import schedule
    from rollout.api.pin import pin_of

    plan = _plan(tmp_path, _config(tmp_path, servers))
    through_one = pin_of(schedule(plan, "lab"), {})
    direct = _plan(tmp_path, _config(tmp_path, servers), host_extra="proxy_jump: none")
    assert pin_of(schedule(direct, "lab"), {}) != through_one
    two_hops = _plan(tmp_path, _config(tmp_path, servers), host_extra="proxy_jump: 'jump,jump2'")
    assert pin_of(schedule(two_hops, "lab"), {}) != through_one
