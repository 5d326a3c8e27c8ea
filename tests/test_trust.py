"""`rollout trust`: host keys are shown with OpenSSH's fingerprint and recorded only when the operator confirms.

Against the real sshd fixture: a run refuses an unknown key, trust lists it and writes
nothing without --yes, records it with --yes (as OpenSSH writes it, appended), and then the
run connects. A changed key is never replaced; an unreachable host is listed; the whole scan
has a deadline and yields to Ctrl-C without writing anything.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest_sshd import SSH_KEYGEN, SshdServer, free_port, generate_key, write_known_hosts
from tests.helpers import REPO, Cli, write_touch_plan

pytestmark = pytest.mark.ssh


def _plan(tmp_path: Path, sshd: SshdServer, known_hosts: Path, hosts: str | None = None, **ssh: str) -> Path:
    """A rehearsal plan whose ssh hosts are the fixture sshd (unless `hosts` says otherwise)."""
    hosts = hosts or f"      web-1: {{ address: {sshd.host}, port: {sshd.port} }}\n"
    options = {
        "user": sshd.user,
        "identity_file": sshd.identity_file,
        "known_hosts": str(known_hosts),
        "connect_timeout": "5s",
        "config": "none",
        **ssh,
    }
    return write_touch_plan(tmp_path, hosts, ssh=", ".join(f"{k}: {v}" for k, v in options.items()), name="trust-plan")


def _fingerprint(sshd: SshdServer) -> str:
    """What `ssh-keygen -lf` prints for the server's host key: the reference an operator checks against."""
    out = subprocess.run(
        [SSH_KEYGEN, "-lf", str(sshd.workdir / "ssh_host_ed25519_key.pub")], capture_output=True, text=True, check=True
    ).stdout
    return out.split()[1]


def _host_key_line(sshd: SshdServer) -> str:
    key_type, data = (sshd.workdir / "ssh_host_ed25519_key.pub").read_text().split()[:2]
    return f"[{sshd.host}]:{sshd.port} {key_type} {data}"


def _run(cli: Cli, plan: Path, tmp_path: Path) -> int:
    code: int = cli("run", str(plan), "--env", "lab", "--state-dir", str(tmp_path / "state")).code
    return code


def test_an_unknown_key_is_shown_and_recorded_only_with_yes_then_a_run_connects(
    tmp_path: Path, sshd: SshdServer, cli: Cli
) -> None:
    known_hosts = tmp_path / "new-dir" / "known_hosts"  # neither the file nor its directory exist
    plan = _plan(tmp_path, sshd, known_hosts)

    assert _run(cli, plan, tmp_path) == 3
    assert not (tmp_path / "web-1.done").exists()
    assert not known_hosts.exists(), "a run never records a key"

    shown = cli("trust", "lab", "--plan", str(plan))  # no --yes, and stdin is no terminal

    assert shown.code == 3, shown.out + shown.err
    line = next(x for x in shown.out.splitlines() if x.startswith("web-1"))
    assert line.split() == ["web-1", f"{sshd.host}:{sshd.port}", "ssh-ed25519", _fingerprint(sshd), "NEW"]
    assert "refusing to add 1 new host key(s) without confirmation" in shown.err
    assert not known_hosts.exists()

    added = cli("trust", "lab", "--plan", str(plan), "--yes")

    assert added.code == 0, added.out + added.err
    assert f"added 1 host key(s) to {known_hosts}" in added.out
    assert known_hosts.read_text() == _host_key_line(sshd) + "\n"
    assert stat.S_IMODE(known_hosts.stat().st_mode) == 0o600
    assert stat.S_IMODE(known_hosts.parent.stat().st_mode) == 0o700

    assert _run(cli, plan, tmp_path) == 0
    assert (tmp_path / "web-1.done").exists()


def test_a_second_trust_has_nothing_to_add_and_writes_no_duplicate(tmp_path: Path, sshd: SshdServer, cli: Cli) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    plan = _plan(tmp_path, sshd, known_hosts)
    assert cli("trust", "lab", "--plan", str(plan), "--yes").code == 0
    before = known_hosts.read_bytes()

    again = cli("trust", "lab", "--plan", str(plan), "--yes")

    assert again.code == 0, again.out + again.err
    assert "nothing to add: every host key is known" in again.out
    assert "known" in next(x for x in again.out.splitlines() if x.startswith("web-1")).split()
    assert known_hosts.read_bytes() == before


def test_a_changed_key_is_reported_with_both_fingerprints_and_never_replaced(
    tmp_path: Path, sshd: SshdServer, cli: Cli
) -> None:
    other = generate_key(tmp_path / "other_host_key")
    known_hosts = tmp_path / "known_hosts"
    write_known_hosts(known_hosts, sshd.host, sshd.port, other)
    before = known_hosts.read_bytes()
    other_fp = subprocess.run(
        [SSH_KEYGEN, "-lf", str(tmp_path / "other_host_key.pub")], capture_output=True, text=True, check=True
    ).stdout.split()[1]
    plan = _plan(tmp_path, sshd, known_hosts)

    result = cli("trust", "lab", "--plan", str(plan), "--yes")

    assert result.code == 3, result.out + result.err
    assert "CHANGED" in next(x for x in result.out.splitlines() if x.startswith("web-1"))
    assert other_fp in result.err
    assert _fingerprint(sshd) in result.err
    assert f"ssh-keygen -R '[{sshd.host}]:{sshd.port}' -f {known_hosts}" in result.err
    assert known_hosts.read_bytes() == before
    assert _run(cli, plan, tmp_path) == 3
    assert not (tmp_path / "web-1.done").exists()


def test_an_unreachable_host_is_listed_and_exits_3_after_adding_what_was_confirmed(
    tmp_path: Path, sshd: SshdServer, cli: Cli
) -> None:
    closed = free_port()
    known_hosts = tmp_path / "known_hosts"
    hosts = (
        f"      web-1: {{ address: {sshd.host}, port: {sshd.port} }}\n"
        f"      gone: {{ address: 127.0.0.1, port: {closed} }}\n"
    )
    plan = _plan(tmp_path, sshd, known_hosts, hosts)

    result = cli("trust", "lab", "--plan", str(plan), "--yes")

    assert result.code == 3, result.out + result.err
    gone = next(x for x in result.out.splitlines() if x.startswith("gone"))
    assert f"127.0.0.1:{closed}" in gone
    assert "unreachable (connection refused by" in gone
    assert known_hosts.read_text() == _host_key_line(sshd) + "\n"


def test_json_lists_every_host_and_hosts_sharing_an_endpoint_share_one_line(
    tmp_path: Path, sshd: SshdServer, cli: Cli
) -> None:
    known_hosts = tmp_path / "known_hosts"
    hosts = (
        f"      web-1: {{ address: {sshd.host}, port: {sshd.port} }}\n"
        f"      web-2: {{ address: {sshd.host}, port: {sshd.port} }}\n"
    )
    plan = _plan(tmp_path, sshd, known_hosts, hosts)

    refused = cli("trust", "lab", "--plan", str(plan), "--json")
    added = cli("trust", "lab", "--plan", str(plan), "--json", "--yes")

    assert refused.code == 3
    doc = refused.json()
    assert (doc["plan"], doc["environment"], doc["added"], doc["exit_status"]) == ("trust-plan", "lab", {}, 3)
    assert [h["host"] for h in doc["hosts"]] == ["web-1", "web-2"]
    row = doc["hosts"][0]
    assert row["state"] == "new"
    assert row["endpoint"] == f"{sshd.host}:{sshd.port}"
    assert row["known_hosts"] == str(known_hosts)
    assert (row["key_type"], row["fingerprint"]) == ("ssh-ed25519", _fingerprint(sshd))
    assert row["line"] == _host_key_line(sshd)
    assert {"known_fingerprint", "reason", "remove_command"} <= set(row)
    assert added.code == 0, added.out + added.err
    assert added.json()["added"] == {str(known_hosts): [_host_key_line(sshd)]}
    assert known_hosts.read_text() == _host_key_line(sshd) + "\n"


def test_existing_lines_and_hashed_entries_are_kept_and_understood(tmp_path: Path, sshd: SshdServer, cli: Cli) -> None:
    # A hashed entry for the server itself (as `ssh-keygen -H` writes it) is known.
    hashed = tmp_path / "hashed"
    hashed.write_text(_host_key_line(sshd) + "\n")
    subprocess.run([SSH_KEYGEN, "-H", "-f", str(hashed)], check=True, capture_output=True)
    assert hashed.read_text().startswith("|1|")
    known = cli("trust", "lab", "--plan", str(_plan(tmp_path, sshd, hashed)))
    assert known.code == 0, known.out + known.err
    assert "nothing to add" in known.out

    # Other people's lines, hashed or not, stay byte for byte; ours is appended on a line of its own.
    other = generate_key(tmp_path / "elsewhere").split()
    team = tmp_path / "team"
    team.write_text(f"db.example {other[0]} {other[1]}\n")
    subprocess.run([SSH_KEYGEN, "-H", "-f", str(team)], check=True, capture_output=True)
    kept = f"# team hosts\n{team.read_text()}web.example {other[0]} {other[1]}"
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(kept)  # no newline at the end
    result = cli("trust", "lab", "--plan", str(_plan(tmp_path, sshd, known_hosts)), "--yes")

    assert result.code == 0, result.out + result.err
    assert known_hosts.read_text() == kept + "\n" + _host_key_line(sshd) + "\n"


def test_local_hosts_are_listed_as_local_and_nothing_is_fetched(tmp_path: Path, cli: Cli) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "name: local-plan\nenvironments:\n  lab:\n    connection: local\n    hosts:\n      box: {}\n"
        "steps:\n  - name: s\n    run: 'true'\n    rollback: none\n"
    )

    result = cli("trust", "lab", "--plan", str(plan))

    assert result.code == 0, result.out + result.err
    assert next(x for x in result.out.splitlines() if x.startswith("box")).split() == ["box", "-", "-", "-", "local"]
    assert "no ssh hosts: nothing to add" in result.out


def test_an_unknown_environment_or_bad_plan_is_a_usage_error(tmp_path: Path, sshd: SshdServer, cli: Cli) -> None:
    plan = _plan(tmp_path, sshd, tmp_path / "known_hosts")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [\n")

    assert cli("trust", "nowhere", "--plan", str(plan)).code == 2
    assert cli("trust", "lab", "--plan", str(bad)).code == 2
    assert cli("trust", "lab").code == 2  # the plan must be named
    assert not (tmp_path / "known_hosts").exists()


# --- deadlines and interrupts: a server that accepts and never speaks ---------------------


@pytest.fixture
def silent_server() -> Iterator[socket.socket]:
    """A listening socket that completes TCP handshakes (the kernel does) but never sends an SSH banner."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)
    try:
        yield listener
    finally:
        listener.close()


def _accepted(listener: socket.socket) -> int:
    """How many connections reached the listener (they wait in its backlog until accepted)."""
    listener.setblocking(False)
    count = 0
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def test_a_silent_endpoint_times_out_once_for_every_host_sharing_it(
    tmp_path: Path, sshd: SshdServer, silent_server: socket.socket, cli: Cli
) -> None:
    port = silent_server.getsockname()[1]
    known_hosts = tmp_path / "known_hosts"
    hosts = f"      a: {{ address: 127.0.0.1, port: {port} }}\n      b: {{ address: 127.0.0.1, port: {port} }}\n"
    plan = _plan(tmp_path, sshd, known_hosts, hosts, connect_timeout="0.5s")

    started = time.monotonic()
    result = cli("trust", "lab", "--plan", str(plan), "--yes")
    elapsed = time.monotonic() - started

    assert result.code == 3, result.out + result.err
    for host in ("a", "b"):
        row = next(x for x in result.out.splitlines() if x.startswith(f"{host} "))
        assert "unreachable (timed out after 0.5s in the SSH key exchange" in row
    assert elapsed < 10
    assert _accepted(silent_server) == 1
    assert not known_hosts.exists()


def test_the_overall_deadline_bounds_a_slow_fleet(
    tmp_path: Path, sshd: SshdServer, silent_server: socket.socket, cli: Cli
) -> None:
    port = silent_server.getsockname()[1]
    plan = _plan(tmp_path, sshd, tmp_path / "known_hosts", f"      a: {{ address: 127.0.0.1, port: {port} }}\n")

    started = time.monotonic()
    result = cli("trust", "lab", "--plan", str(plan), "--timeout", "0.5s")  # each host may take 5s

    assert time.monotonic() - started < 4
    assert result.code == 3
    assert "unreachable (" in next(x for x in result.out.splitlines() if x.startswith("a "))


def test_ctrl_c_ends_with_130_and_writes_nothing(
    tmp_path: Path, sshd: SshdServer, silent_server: socket.socket
) -> None:
    port = silent_server.getsockname()[1]
    known_hosts = tmp_path / "known_hosts"
    hosts = (
        f"      web-1: {{ address: {sshd.host}, port: {sshd.port} }}\n"
        f"      stuck: {{ address: 127.0.0.1, port: {port} }}\n"
    )
    plan = _plan(tmp_path, sshd, known_hosts, hosts, connect_timeout="60s")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rollout", "trust", "lab", "--plan", str(plan), "--yes"],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        silent_server.settimeout(30)
        conn, _ = silent_server.accept()  # the scan is under way: it is waiting for this server
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    conn.close()

    assert proc.returncode == 130, out + err
    assert "interrupted: nothing was written" in err
    assert not known_hosts.exists()


def test_an_alias_is_placed_by_the_ssh_config_and_its_key_goes_to_its_user_known_hosts_file(
    tmp_path: Path, sshd: SshdServer, cli: Cli
) -> None:
    known_hosts = tmp_path / "from-config" / "known_hosts"
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host lab-1\n  HostName {sshd.host}\n  Port {sshd.port}\n  User {sshd.user}\n"
        f"  IdentityFile {sshd.identity_file}\n  UserKnownHostsFile {known_hosts}\n"
    )
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"name: alias-plan\nenvironments:\n  lab:\n    rehearsal: true\n    connection: ssh\n"
        f"    ssh: {{ config: {config} }}\n    hosts:\n      lab-1: {{}}\n"
        f"steps:\n  - name: touch\n    run: touch {tmp_path}/lab-1.done\n    rollback: rm -f {tmp_path}/lab-1.done\n"
    )

    result = cli("trust", "lab", "--plan", str(plan), "--yes")

    assert result.code == 0, result.out + result.err
    assert f"lab-1  {sshd.host}:{sshd.port}" in result.out
    assert known_hosts.read_text() == _host_key_line(sshd) + "\n"
    assert _run(cli, plan, tmp_path) == 0


def _read(fd: int, deadline: float) -> bytes:
    """What the terminal has next (b"" once it closed), waiting no later than `deadline`."""
    import select

    ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
    assert ready, "rollout trust said nothing before the deadline"
    try:
        return os.read(fd, 4096)
    except OSError:  # EIO: the terminal closed with the process
        return b""


def _on_a_terminal(plan: Path, answer: bytes) -> tuple[int, str]:
    """Run `rollout trust` with a pseudo-terminal as stdin and stdout, answering its prompt with `answer`."""
    import pty

    deadline = time.monotonic() + 30
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rollout", "trust", "lab", "--plan", str(plan)],
        cwd=REPO,
        stdin=follower,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    seen = b""
    try:
        while b"[y/N]" not in seen:  # the prompt: answer only once it is asked
            chunk = _read(leader, deadline)
            assert chunk, seen
            seen += chunk
        os.write(leader, answer)
        while chunk := _read(leader, deadline):
            seen += chunk
        code = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(leader)
    return code, seen.decode(errors="replace")


def test_on_a_terminal_new_keys_are_added_only_when_the_operator_says_yes(tmp_path: Path, sshd: SshdServer) -> None:
    known_hosts = tmp_path / "known_hosts"
    plan = _plan(tmp_path, sshd, known_hosts)

    declined, text = _on_a_terminal(plan, b"n\n")
    assert declined == 3, text
    assert _fingerprint(sshd) in text
    assert "no key was added" in text
    assert not known_hosts.exists()

    accepted, text = _on_a_terminal(plan, b"y\n")
    assert accepted == 0, text
    assert known_hosts.read_text() == _host_key_line(sshd) + "\n"
