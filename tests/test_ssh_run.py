"""Whole runs over SSH against a real sshd on 127.0.0.1: changes, verification, rollback, host keys."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from rollout.cli.app import run_cli
from rollout.journal import read_journal
from tests.conftest_sshd import SshdServer

pytestmark = pytest.mark.ssh


def _plan(tmp_path: Path, sshd: SshdServer, *, known_hosts: str, fail_on: str = "none") -> Path:
    work = tmp_path / "remote"
    work.mkdir(exist_ok=True)
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"""
name: ssh-rollout
vars:
  work: "{work}"
  fail_on: "{fail_on}"
environments:
  lab:
    rehearsal: true
    connection: ssh
    ssh:
      user: {sshd.user}
      port: {sshd.port}
      identity_file: {sshd.identity_file}
      known_hosts: {known_hosts}
      connect_timeout: 5s
    hosts:
      node-a: {{ address: 127.0.0.1, vars: {{ name: a }} }}
      node-b: {{ address: 127.0.0.1, vars: {{ name: b }} }}
prechecks:
  - name: work dir is writable
    command: test -w {{{{ work }}}}
strategy:
  waves: [1, 100%]
steps:
  - name: install
    run: echo v2 > {{{{ work }}}}/{{{{ name }}}}.version
    verify:
      - command: {{ run: "cat {{{{ work }}}}/{{{{ name }}}}.version", stdout: "^v2$" }}
    rollback: rm -f {{{{ work }}}}/{{{{ name }}}}.version
  - name: restart
    run: test {{{{ name }}}} != {{{{ fail_on }}}} && touch {{{{ work }}}}/{{{{ name }}}}.restarted
    rollback: rm -f {{{{ work }}}}/{{{{ name }}}}.restarted
"""
    )
    return plan


def _run(plan: Path, state: Path) -> int:
    return run_cli(["run", str(plan), "--env", "lab", "--state-dir", str(state)])


def test_a_plan_runs_over_ssh_on_every_host(tmp_path: Path, sshd: SshdServer) -> None:
    plan = _plan(tmp_path, sshd, known_hosts=sshd.known_hosts)
    assert _run(plan, tmp_path / "state") == 0
    work = tmp_path / "remote"
    assert (work / "a.version").read_text() == "v2\n"
    assert (work / "b.version").read_text() == "v2\n"
    assert (work / "a.restarted").exists()
    assert (work / "b.restarted").exists()


def test_a_failure_over_ssh_rolls_back_every_host_newest_first(tmp_path: Path, sshd: SshdServer) -> None:
    plan = _plan(tmp_path, sshd, known_hosts=sshd.known_hosts, fail_on="b")
    state = tmp_path / "state"
    assert _run(plan, state) == 1
    work = tmp_path / "remote"
    assert sorted(p.name for p in work.iterdir()) == []
    journal = next((state / "runs").iterdir()) / "journal.jsonl"
    undone = [(r.host, r.step) for r in read_journal(journal).records if r.kind == "rollback.intent"]
    # the step that failed had started, so it is rolled back too
    assert sorted(undone) == [
        ("node-a", "install"),
        ("node-a", "restart"),
        ("node-b", "install"),
        ("node-b", "restart"),
    ]
    assert undone.index(("node-a", "restart")) < undone.index(("node-a", "install"))
    assert undone.index(("node-b", "restart")) < undone.index(("node-b", "install"))


def test_an_unknown_host_key_refuses_the_run_before_any_change(
    tmp_path: Path, sshd: SshdServer, empty_known_hosts: str, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = _plan(tmp_path, sshd, known_hosts=empty_known_hosts)
    assert _run(plan, tmp_path / "state") == 3
    out = capsys.readouterr()
    assert "node-a" in out.out
    assert "ssh-keyscan" in out.out
    assert list((tmp_path / "remote").iterdir()) == []


def test_a_changed_host_key_refuses_the_run(
    tmp_path: Path, sshd: SshdServer, wrong_known_hosts: str, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = _plan(tmp_path, sshd, known_hosts=wrong_known_hosts)
    assert _run(plan, tmp_path / "state") == 3
    assert "CHANGED" in capsys.readouterr().out
    assert list((tmp_path / "remote").iterdir()) == []


def test_an_unreachable_host_refuses_the_run_before_any_host_changes(
    tmp_path: Path, sshd: SshdServer, capsys: pytest.CaptureFixture[str]
) -> None:
    plan = _plan(tmp_path, sshd, known_hosts=sshd.known_hosts)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    text = plan.read_text().replace(
        "node-b: { address: 127.0.0.1, vars: { name: b } }",
        f"node-b: {{ address: 127.0.0.1, port: {closed}, vars: {{ name: b }} }}",
    )
    plan.write_text(text)
    assert _run(plan, tmp_path / "state") == 3
    out = capsys.readouterr().out
    assert "node-b: pre-check 'ssh connection' failed" in out
    assert list((tmp_path / "remote").iterdir()) == []
