"""`become`: steps and checks through real sudo, over a real sshd and locally.

The invariants: a become command runs as root (or `become_user`); the sudo password
travels only on stdin, so it is in no process's argv, no file under `.rollout/`, no output
and no report; a wrong password (or none where one is needed) refuses the run before
anything changes (exit 3), never hangs; and a become command killed on its timeout or by
a cancel leaves no process behind, through either executor.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rollout.executors.base import Become, Target
from rollout.executors.local import LocalExecutor
from rollout.executors.ssh import SshExecutor
from tests.helpers import Cli, cli_env, events, rollout, run_id_of, start_rollout, wait_for_event

if TYPE_CHECKING:
    from tests.conftest_sudo import SudoUsers

pytest_plugins = ["tests.conftest_sudo"]
pytestmark = pytest.mark.ssh

REPO = Path(__file__).resolve().parent.parent
PASSWORD_VAR = "ROLLOUT_TEST_SUDO_PASSWORD"


@pytest.fixture(autouse=True)
def _password_variable_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every plan here declares the secret; tests that use it set their own value."""
    monkeypatch.setenv(PASSWORD_VAR, "unused-in-this-test")


@pytest.fixture
def out() -> Iterator[Path]:
    """A directory every test user may write to (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="rollout-become-"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _plan(
    tmp_path: Path,
    users: SudoUsers,
    out: Path,
    *,
    login: str,
    connection: str = "ssh",
    env_extra: str = "",
    steps: str,
    prechecks: str = "",
) -> Path:
    server = users.sshd
    ssh = (
        f"""
    ssh:
      user: {login}
      port: {server.port}
      identity_file: {server.identity_file}
      known_hosts: {server.known_hosts}
      connect_timeout: 5s"""
        if connection == "ssh"
        else ""
    )
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"""name: become
vars:
  out: "{out}"
  sudo_password: {{ env: {PASSWORD_VAR} }}
  plain_password: not-a-secret
environments:
  lab:
    rehearsal: true
    connection: {connection}{ssh}
{env_extra}
    hosts:
      web-1: {{ address: 127.0.0.1 }}
{prechecks}
steps:
{steps}
"""
    )
    return plan


def _state_files(state: Path) -> list[Path]:
    return [p for p in state.rglob("*") if p.is_file()]


def _assert_nowhere(secret: str, state: Path, *texts: str) -> None:
    """The secret is in no file of the state directory and in none of `texts`."""
    assert _state_files(state), "the run left no files to look at"
    for path in _state_files(state):
        assert secret.encode() not in path.read_bytes(), f"the password is in {path}"
    for text in texts:
        assert secret not in text


def _token_processes(token: str) -> list[str]:
    """Live (non-zombie) processes of this machine whose argv holds `token`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if token in argv and state not in ("Z", "X"):
            found.append(f"{entry.name} {state} {argv}")
    return found


def _sleeping(token: str) -> list[str]:
    """The sleepers of `_sleepers(token)` that are alive (not the shells and sudo around them)."""
    return [p for p in _token_processes(token) if p.split(" ", 2)[2].startswith("sleep ")]


def _assert_none_left(token: str) -> None:
    """Nothing carrying `token` is alive; killed processes get a bounded moment to be reaped."""
    deadline = time.monotonic() + 5.0
    while (left := _token_processes(token)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == [], left


# --- passwordless -------------------------------------------------------------------------


@pytest.mark.parametrize("connection", ["ssh", "local"])
def test_passwordless_become_runs_as_root_and_as_become_user(
    tmp_path: Path, sudo_users: SudoUsers, out: Path, cli: Cli, connection: str
) -> None:
    steps = f"""
  - name: as-root
    become: true
    run: id -un > {{{{ out }}}}/root
    rollback: rm -f {{{{ out }}}}/root
  - name: as-user
    become: true
    become_user: {sudo_users.pw}
    run: id -un > {{{{ out }}}}/user
    rollback: rm -f {{{{ out }}}}/user
  - name: as-login
    run: id -un > {{{{ out }}}}/login
    rollback: rm -f {{{{ out }}}}/login
"""
    plan = _plan(tmp_path, sudo_users, out, login=sudo_users.nopw, connection=connection, steps=steps)
    result = cli("run", str(plan), "--env", "lab", "--state-dir", str(tmp_path / "state"))
    assert result.code == 0, result.out + result.err
    assert (out / "root").read_text() == "root\n"
    assert (out / "user").read_text() == f"{sudo_users.pw}\n"
    login = sudo_users.nopw if connection == "ssh" else "root"  # local runs as the orchestrator
    assert (out / "login").read_text() == f"{login}\n"


def test_environment_become_covers_steps_and_checks_unless_they_opt_out(
    tmp_path: Path, sudo_users: SudoUsers, out: Path, cli: Cli
) -> None:
    env_extra = "    become: true"
    prechecks = """prechecks:
  - name: root
    command: { run: id -un, stdout: "^root$" }
"""
    steps = f"""
  - name: as-root
    run: id -un > {{{{ out }}}}/root
    verify:
      - command: {{ run: id -un, stdout: "^root$" }}
      - command: {{ run: id -un, stdout: "^{sudo_users.nopw}$" }}
        become: false
    rollback: rm -f {{{{ out }}}}/root
  - name: opted-out
    become: false
    run: id -un > {{{{ out }}}}/login
    rollback: rm -f {{{{ out }}}}/login
"""
    plan = _plan(
        tmp_path, sudo_users, out, login=sudo_users.nopw, env_extra=env_extra, steps=steps, prechecks=prechecks
    )
    shown = cli("plan", str(plan), "--env", "lab")
    assert shown.code == 0, shown.out + shown.err
    assert "as-root (timeout 5m, sudo as root)" in shown.out
    assert "opted-out (timeout 5m)\n" in shown.out
    assert "command `id -un` exits 0, stdout ~ /^root$/ (sudo as root)" in shown.out
    result = cli("run", str(plan), "--env", "lab", "--state-dir", str(tmp_path / "state"))
    assert result.code == 0, result.out + result.err
    assert (out / "root").read_text() == "root\n"
    assert (out / "login").read_text() == f"{sudo_users.nopw}\n"


def test_a_rollback_runs_through_sudo_like_its_step(tmp_path: Path, sudo_users: SudoUsers, out: Path, cli: Cli) -> None:
    steps = """
  - name: root-file
    become: true
    run: touch {{ out }}/made && chmod 600 {{ out }}/made && chown root {{ out }}/made
    rollback: id -un > {{ out }}/undone-by && rm {{ out }}/made
  - name: fails
    run: exit 3
    rollback: "true"
"""
    plan = _plan(tmp_path, sudo_users, out, login=sudo_users.nopw, steps=steps)
    result = cli("run", str(plan), "--env", "lab", "--state-dir", str(tmp_path / "state"))
    assert result.code == 1, result.out + result.err
    assert (out / "undone-by").read_text() == "root\n"
    assert not (out / "made").exists()


# --- with a password ----------------------------------------------------------------------


def test_password_become_keeps_the_password_out_of_argv_files_output_and_reports(
    tmp_path: Path, sudo_users: SudoUsers, out: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_VAR, sudo_users.password)
    env_extra = '    become: true\n    become_password: "{{ sudo_password }}"'
    # While the step runs (through sudo, as root), it records every process's argv.
    steps = r"""
  - name: as-root
    run: id -un > {{ out }}/root; cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\0' ' ' > {{ out }}/argv; true
    verify:
      - command: { run: "cat {{ out }}/root", stdout: "^root$" }
    rollback: rm -f {{ out }}/root
"""
    plan = _plan(tmp_path, sudo_users, out, login=sudo_users.pw, env_extra=env_extra, steps=steps)
    state = tmp_path / "state"
    result = cli("run", str(plan), "--env", "lab", "--state-dir", str(state))
    assert result.code == 0, result.out + result.err
    assert (out / "root").read_text() == "root\n"
    argv = (out / "argv").read_text()
    assert "sudo -k -S -p  -u root -- /bin/sh -c" in argv  # the step's own sudo was among them
    assert sudo_users.password not in argv
    run_id = next((state / "runs").iterdir()).name
    reports = [cli("report", run_id, "--format", fmt, "--state-dir", str(state)) for fmt in ("md", "json", "html")]
    assert all(r.code == 0 for r in reports), [r.err for r in reports]
    timeline = cli("timeline", run_id, "--state-dir", str(state))
    texts = [t for r in [result, *reports, timeline] for t in (r.out, r.err)]
    _assert_nowhere(sudo_users.password, state, *texts)


def test_a_wrong_password_refuses_the_run_before_any_change(
    tmp_path: Path, sudo_users: SudoUsers, out: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = f"wrong-{secrets.token_hex(8)}"
    monkeypatch.setenv(PASSWORD_VAR, wrong)
    env_extra = '    become: true\n    become_password: "{{ sudo_password }}"'
    steps = """
  - name: change
    run: touch {{ out }}/changed
    rollback: rm -f {{ out }}/changed
"""
    plan = _plan(tmp_path, sudo_users, out, login=sudo_users.pw, env_extra=env_extra, steps=steps)
    state = tmp_path / "state"
    started = time.monotonic()
    result = cli("run", str(plan), "--env", "lab", "--state-dir", str(state))
    assert result.code == 3, result.out + result.err
    assert time.monotonic() - started < 30  # a refusal, not a hang
    assert "sudo as root on web-1 failed: wrong password" in result.out + result.err
    assert list(out.iterdir()) == []
    _assert_nowhere(wrong, state, result.out, result.err)


def test_sudo_that_needs_a_password_none_was_given_refuses_the_run(
    tmp_path: Path, sudo_users: SudoUsers, out: Path, cli: Cli
) -> None:
    steps = """
  - name: change
    become: true
    run: touch {{ out }}/changed
    rollback: rm -f {{ out }}/changed
"""
    plan = _plan(tmp_path, sudo_users, out, login=sudo_users.pw, steps=steps)
    result = cli("run", str(plan), "--env", "lab", "--state-dir", str(tmp_path / "state"))
    assert result.code == 3, result.out + result.err
    assert "sudo as root on web-1 failed: a password is required" in result.out + result.err
    assert list(out.iterdir()) == []


def test_a_password_where_sudo_needs_none_is_refused_rather_than_fed_to_the_command(
    tmp_path: Path, sudo_users: SudoUsers, out: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PASSWORD_VAR, sudo_users.password)
    env_extra = '    become: true\n    become_password: "{{ sudo_password }}"'
    steps = """
  - name: change
    run: cat > {{ out }}/stdin
    rollback: rm -f {{ out }}/stdin
"""
    plan = _plan(tmp_path, sudo_users, out, login=sudo_users.nopw, env_extra=env_extra, steps=steps)
    result = cli("run", str(plan), "--env", "lab", "--state-dir", str(tmp_path / "state"))
    assert result.code == 3, result.out + result.err
    assert "no password is needed, but become_password is set" in result.out + result.err
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    ("password", "why"),
    [
        ('"hunter2-literal"', "must name a secret variable"),
        ('"{{ plain_password }}"', "'plain_password' is not secret"),
        ('"{{ nowhere }}"', "'nowhere', which is not defined"),
    ],
)
def test_a_password_that_is_not_a_secret_variable_is_a_plan_error(
    tmp_path: Path, sudo_users: SudoUsers, out: Path, cli: Cli, password: str, why: str
) -> None:
    env_extra = f"    become: true\n    become_password: {password}"
    steps = """
  - name: change
    run: "true"
    rollback: "true"
"""
    plan = _plan(tmp_path, sudo_users, out, login=sudo_users.pw, env_extra=env_extra, steps=steps)
    result = cli("validate", str(plan))
    assert result.code == 2, result.out + result.err
    line = next(i for i, text in enumerate(plan.read_text().splitlines(), 1) if "become_password" in text)
    assert f"plan.yaml:{line}:" in result.out + result.err
    assert why in result.out + result.err


# --- killing what runs through sudo ------------------------------------------------------


def _sleepers(token: str) -> str:
    return f"sleep 300.{token} & sleep 301.{token}; echo never"


@pytest.mark.parametrize("connection", ["ssh", "local"])
def test_a_become_step_killed_on_its_timeout_leaves_no_process(
    tmp_path: Path, sudo_users: SudoUsers, out: Path, cli: Cli, connection: str
) -> None:
    token = f"{secrets.randbelow(10**6):06d}"
    steps = f"""
  - name: hangs
    become: true
    become_user: {sudo_users.pw}
    timeout: 1s
    run: {_sleepers(token)}
    rollback: "true"
"""
    plan = _plan(tmp_path, sudo_users, out, login=sudo_users.nopw, connection=connection, steps=steps)
    result = cli("run", str(plan), "--env", "lab", "--state-dir", str(tmp_path / "state"))
    assert result.code == 1, result.out + result.err
    assert "timed out" in result.out
    _assert_none_left(f".{token}")


@pytest.mark.parametrize("connection", ["ssh", "local"])
def test_a_cancelled_become_command_leaves_no_process(sudo_users: SudoUsers, connection: str) -> None:
    token = f"{secrets.randbelow(10**6):06d}"
    if connection == "ssh":
        executor: LocalExecutor | SshExecutor = SshExecutor(sudo_users.sshd.target("web-1", user=sudo_users.nopw))
    else:
        executor = LocalExecutor(Target("web-1"))
    started = threading.Event()
    results = []

    def run() -> None:
        results.append(executor.run(_sleepers(token), timeout=60, become=Become(), on_start=lambda _: started.set()))

    worker = threading.Thread(target=run)
    worker.start()
    try:
        assert started.wait(10)
        deadline = time.monotonic() + 10
        while len(_sleeping(f".{token}")) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)  # both sleepers exist before the cancel comes
        executor.cancel()
        worker.join(15)
        assert not worker.is_alive()
    finally:
        executor.close()
    assert results[0].cancelled
    _assert_none_left(f".{token}")


def test_a_become_command_of_an_unprivileged_orchestrator_is_killed_through_sudo(
    sudo_users: SudoUsers, out: Path
) -> None:
    """The local executor, run by a user who may not signal root: the kill goes through sudo."""
    python = "/usr/bin/python3"
    if not os.path.exists(python):
        pytest.skip("no system python3 the test user can run")
    token = f"{secrets.randbelow(10**6):06d}"
    script = (
        "from rollout.executors.local import LocalExecutor\n"
        "from rollout.executors.base import Become, Target\n"
        f"r = LocalExecutor(Target('here')).run({_sleepers(token)!r}, timeout=1, become=Become())\n"
        "print(r.timed_out, r.exit_code)\n"
    )
    done = subprocess.run(
        ["runuser", "-u", sudo_users.nopw, "--", python, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=out,
        env={"PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", "PATH": os.environ["PATH"]},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "None"]
    _assert_none_left(f".{token}")


def test_recover_ends_a_become_command_the_login_user_cannot_see(
    tmp_path: Path, sudo_users: SudoUsers, out: Path
) -> None:
    """The login user can neither read root's /proc/PID/environ nor signal it: recover goes through sudo."""
    token = f"{secrets.randbelow(10**6):06d}"
    steps = f"""
  - name: hangs
    become: true
    run: {_sleepers(token)}
    rollback: "true"
"""
    plan = _plan(tmp_path, sudo_users, out, login=sudo_users.nopw, steps=steps)
    state = tmp_path / "state"
    env = cli_env(**{PASSWORD_VAR: "unused-in-this-test"})
    proc = start_rollout("run", plan, "--env", "lab", "--state-dir", state, env=env)
    try:
        process = wait_for_event(state, lambda e: e["kind"] == "process.start", proc=proc)
        assert process["data"]["become_user"] == "root"
        deadline = time.monotonic() + 10
        while len(_sleeping(f".{token}")) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert len(_sleeping(f".{token}")) == 2  # the dead run's command still runs
    result = rollout("recover", run_id_of(state), "--state-dir", state, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    _assert_none_left(f".{token}")
    ended = [e for e in events(state) if e["kind"] == "recover.processes"]
    assert [(e["data"].get("become_user"), e["outcome"]) for e in ended] == [(None, "none"), ("root", "ended")]


def test_steps_and_checks_without_become_stay_shared_by_every_host(tmp_path: Path) -> None:
    """Settling become must not copy what it leaves unchanged: an HTTP check keeps one client per object."""
    from rollout import api

    plan = tmp_path / "plan.yaml"
    plan.write_text(
        """name: shared
environments:
  lab: { hosts: { a: , b: } }
guards:
  - { name: up, http: { url: "http://127.0.0.1:9/health" } }
steps:
  - { name: s, run: "true", rollback: "true", verify: [ { command: "true" } ] }
"""
    )
    a, b = api.schedule(api.load(plan), "lab").hosts.values()
    assert a.guards[0] is b.guards[0]
    assert a.steps[0] is b.steps[0]


def test_become_on_a_check_that_runs_no_command_on_the_host_is_a_plan_error(tmp_path: Path, cli: Cli) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        """name: http-become
environments:
  lab: { hosts: { a: } }
prechecks:
  - { name: up, become: true, http: { url: "http://127.0.0.1:9/health" } }
steps:
  - { name: s, run: "true", rollback: "true" }
"""
    )
    result = cli("validate", str(plan))
    assert result.code == 2, result.out + result.err
    assert "plan.yaml:5:" in result.out + result.err
    assert "http and tcp checks run from the orchestrator" in result.out + result.err
