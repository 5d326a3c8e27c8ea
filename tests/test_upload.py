"""Upload steps over both executors, against real files and the real sshd fixture.

Invariants: after a successful upload dest holds exactly the intended bytes and mode (its
sha256 read back from the target); a rollback puts back the previous content byte for byte
with its mode, or removes a dest that did not exist; a failure before the rename (missing
directory, dropped connection, interrupt) leaves dest as it was; the journal records src,
dest, size and sha256 but never the content.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from rollout.cli.app import run_cli
from rollout.journal import read_journal
from tests.conftest_sshd import SshdServer

OLD = b"old\x00content\xff\n" * 3
NEW = b"new content: the release\n"


def _connection(kind: str, sshd: SshdServer | None) -> str:
    if kind == "local":
        return "connection: local\n    hosts: { h1: {} }"
    assert sshd is not None
    return f"""connection: ssh
    ssh:
      user: {sshd.user}
      port: {sshd.port}
      identity_file: {sshd.identity_file}
      known_hosts: {sshd.known_hosts}
      connect_timeout: 5s
    hosts: {{ h1: {{ address: 127.0.0.1 }} }}"""


def _plan(tmp_path: Path, connection: str, steps: str) -> Path:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"""
name: upload-test
vars:
  port: "8443"
  motto: it's "quoted" $HOME
environments:
  lab:
    rehearsal: true
    {connection}
steps:
{steps}
"""
    )
    return plan


def _run(plan: Path, state: Path) -> int:
    return run_cli(["run", str(plan), "--env", "lab", "--state-dir", str(state)])


def _journal(state: Path) -> tuple[str, list[dict[str, object]]]:
    run = next((state / "runs").iterdir())
    text = (run / "journal.jsonl").read_text()
    return text, [r.__dict__ for r in read_journal(run / "journal.jsonl").records]


@pytest.fixture(params=["local", "ssh"])
def connection(request: pytest.FixtureRequest) -> str:
    """Each test runs on a local target and over SSH (the sshd fixture only when needed)."""
    if request.param == "local":
        return _connection("local", None)
    return _connection("ssh", request.getfixturevalue("sshd"))


def test_upload_puts_content_and_mode_and_journals_its_sha256_not_its_content(tmp_path: Path, connection: str) -> None:
    (tmp_path / "app.conf").write_bytes(NEW)
    dest = tmp_path / "target" / "app.conf"
    dest.parent.mkdir()
    plan = _plan(
        tmp_path,
        connection,
        f"""  - name: config
    upload: {{ src: app.conf, dest: {dest}, mode: "0640" }}""",
    )
    state = tmp_path / "state"
    assert _run(plan, state) == 0
    assert dest.read_bytes() == NEW
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640
    text, records = _journal(state)
    assert "the release" not in text
    result = next(r for r in records if r["kind"] == "step.result")
    facts = result["data"]["upload"]  # type: ignore[index]
    assert facts == {
        "src": "app.conf",
        "dest": str(dest),
        "mode": "0640",
        "size": len(NEW),
        "sha256": hashlib.sha256(NEW).hexdigest(),
    }


def test_rollback_restores_the_old_file_byte_for_byte_and_removes_a_new_one(tmp_path: Path, connection: str) -> None:
    (tmp_path / "app.conf").write_bytes(NEW)
    target = tmp_path / "target"
    target.mkdir()
    existing, fresh = target / "app.conf", target / "extra.conf"
    existing.write_bytes(OLD)
    existing.chmod(0o600)
    plan = _plan(
        tmp_path,
        connection,
        f"""  - name: config
    upload: {{ src: app.conf, dest: {existing}, mode: "0644" }}
  - name: extra
    upload: {{ src: app.conf, dest: {fresh} }}
  - name: restart
    run: "false"
    rollback: none""",
    )
    state = tmp_path / "state"
    assert _run(plan, state) == 1
    assert existing.read_bytes() == OLD
    assert stat.S_IMODE(existing.stat().st_mode) == 0o600
    assert not fresh.exists()
    # Nothing of the upload is left beside dest: the kept copy went back in place.
    assert sorted(p.name for p in target.iterdir()) == ["app.conf"]
    _, records = _journal(state)
    undone = [(r["step"], r["outcome"]) for r in records if r["kind"] == "rollback.result"]
    assert undone == [("restart", "skipped"), ("extra", "ok"), ("config", "ok")]


def test_a_template_upload_renders_the_hosts_vars_without_shell_quoting(tmp_path: Path, connection: str) -> None:
    (tmp_path / "app.conf.tpl").write_text("port={{ port }}\nmotto={{ motto }}\nhost={{ host }}\n")
    dest = tmp_path / "app.conf"
    plan = _plan(
        tmp_path,
        connection,
        f"""  - name: config
    upload: {{ src: app.conf.tpl, dest: {dest}, template: true }}""",
    )
    assert _run(plan, tmp_path / "state") == 0
    assert dest.read_text() == 'port=8443\nmotto=it\'s "quoted" $HOME\nhost=h1\n'


def test_an_undefined_variable_or_a_missing_src_is_invalid_before_anything_runs(
    tmp_path: Path, connection: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "app.conf.tpl").write_text("x={{ nowhere }}\n")
    dest = tmp_path / "app.conf"
    dest.write_bytes(OLD)
    plan = _plan(
        tmp_path,
        connection,
        f"""  - name: first
    run: touch {tmp_path}/marker
    rollback: rm -f {tmp_path}/marker
  - name: config
    upload: {{ src: app.conf.tpl, dest: {dest}, template: true }}""",
    )
    state = tmp_path / "state"
    assert _run(plan, state) == 2
    line = next(i for i, text in enumerate(plan.read_text().splitlines(), 1) if "src: app.conf.tpl" in text)
    assert f"plan.yaml:{line}:15: error at steps[1].upload.src" in capsys.readouterr().err
    assert dest.read_bytes() == OLD
    assert not (tmp_path / "marker").exists()
    (tmp_path / "app.conf.tpl").unlink()
    assert run_cli(["validate", str(plan)]) == 2
    assert "upload source 'app.conf.tpl': No such file or directory" in capsys.readouterr().out


def test_an_upload_into_a_missing_directory_fails_and_rolls_back_earlier_steps(tmp_path: Path, connection: str) -> None:
    (tmp_path / "app.conf").write_bytes(NEW)
    first = tmp_path / "first.conf"
    first.write_bytes(OLD)
    plan = _plan(
        tmp_path,
        connection,
        f"""  - name: first
    upload: {{ src: app.conf, dest: {first} }}
  - name: marker
    run: touch {tmp_path}/marker
    rollback: rm -f {tmp_path}/marker
  - name: nowhere
    upload: {{ src: app.conf, dest: {tmp_path}/no/such/dir/app.conf }}""",
    )
    state = tmp_path / "state"
    assert _run(plan, state) == 1
    assert first.read_bytes() == OLD
    assert not (tmp_path / "marker").exists()
    _, records = _journal(state)
    failed = [r for r in records if r["kind"] == "step.result" and r["outcome"] != "ok"]
    assert [r["step"] for r in failed] == ["nowhere"]
    assert "no/such/dir" in str(failed[0]["data"])
    assert not list(tmp_path.glob("first.conf.rollout-prev-*"))


def test_a_step_with_both_run_and_upload_is_invalid_naming_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "app.conf").write_bytes(NEW)
    plan = _plan(
        tmp_path,
        _connection("local", None),
        f"""  - name: both
    run: "true"
    upload: {{ src: app.conf, dest: {tmp_path}/x }}
    rollback: none""",
    )
    assert run_cli(["validate", str(plan)]) == 2


def test_rollout_plan_shows_the_upload(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "app.conf").write_bytes(NEW)
    plan = _plan(
        tmp_path,
        _connection("local", None),
        """  - name: config
    upload: { src: app.conf, dest: /etc/app/app.conf, mode: "0600", owner: "root:root", template: true }""",
    )
    assert run_cli(["plan", str(plan), "--env", "lab"]) == 0
    out = capsys.readouterr().out
    assert "upload:   app.conf -> /etc/app/app.conf (mode 0600, owner root:root, rendered with the host's vars)" in out
    assert "rollback: restore the previous /etc/app/app.conf (or remove it if it did not exist)" in out
    assert os.path.exists(tmp_path / "app.conf")


def test_the_upload_source_is_part_of_the_plan_digest_its_copy_and_verify(tmp_path: Path) -> None:
    """Invariant: what a host receives is covered by the plan's digest, like an include.

    Editing the source changes the digest (so a lock or a rehearsal of the old content no
    longer matches), the run keeps the source in its plan copy, and `verify` checks it.
    """
    from rollout.api import load, verify

    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "app.conf").write_bytes(NEW)
    dest = tmp_path / "target" / "app.conf"
    dest.parent.mkdir()
    plan = _plan(
        tmp_path,
        _connection("local", None),
        f"""  - name: config
    upload: {{ src: files/app.conf, dest: {dest} }}""",
    )
    before = load(plan).digest
    (tmp_path / "files" / "app.conf").write_bytes(NEW + b"# one more line\n")
    assert load(plan).digest != before
    (tmp_path / "files" / "app.conf").write_bytes(NEW)
    assert load(plan).digest == before

    state = tmp_path / "state"
    assert _run(plan, state) == 0
    run = next((state / "runs").iterdir())
    copies = list((run / "plan").rglob("app.conf"))
    assert [c.read_bytes() for c in copies] == [NEW]
    assert verify(run.name, state_dir=state).ok
    copies[0].write_bytes(b"edited after the run\n")
    assert not verify(run.name, state_dir=state).ok


def test_a_host_receives_the_source_as_loaded_not_as_edited_after(tmp_path: Path) -> None:
    """Invariant: the bytes uploaded are the bytes whose sha256 the digest holds, even if the file changes mid-run."""
    from rollout.api import prepare, run

    (tmp_path / "app.conf").write_bytes(NEW)
    dest = tmp_path / "target" / "app.conf"
    dest.parent.mkdir()
    plan = _plan(
        tmp_path,
        _connection("local", None),
        f"""  - name: config
    upload: {{ src: app.conf, dest: {dest} }}""",
    )
    prepared = prepare(plan, "lab")
    (tmp_path / "app.conf").write_bytes(b"edited after the plan was prepared\n")
    outcome = run(prepared, "lab", state_dir=tmp_path / "state", signals=False)
    assert outcome.exit_status == 0
    assert dest.read_bytes() == NEW
