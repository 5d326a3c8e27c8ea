"""ssh hosts are placed by the plan, then the OpenSSH client config, then defaults; never a guessed 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout.engine.prepare import prepare_schedule
from rollout.executors.base import Target
from rollout.executors.ssh_config import HostEntry, SshConfig, SshConfigError, alias_matched, resolve_target
from rollout.planfile import load_plan
from tests.conftest_sshd import SshdServer
from tests.helpers import Cli, write_touch_plan

# --- the pure resolution ---------------------------------------------------------------

# As in OpenSSH, the first value found wins, so the catch-all comes last.
CONFIG = """\
Host web-* !web-9
    HostName 10.0.0.5
    User deploy
    Port 2222
    IdentityFile /keys/web
    IdentitiesOnly yes
    UserKnownHostsFile /keys/known_hosts /etc/ssh/other
    ServerAliveInterval 15

Host *
    ConnectTimeout 7
    User everyone
"""


def _entry(alias: str) -> HostEntry:
    return SshConfig(path="/cfg", text=CONFIG).entry(alias)


def _resolve(alias: str, **plan: object) -> Target:
    values: dict[str, object] = {
        "address": None,
        "port": None,
        "user": None,
        "identity_file": None,
        "known_hosts": None,
        "connect_timeout": None,
    }
    values.update(plan)
    return resolve_target(alias, _entry(alias), **values)  # type: ignore[arg-type]


def test_an_alias_takes_everything_from_its_host_entry() -> None:
    target = _resolve("web-1")

    assert (target.address, target.port, target.user) == ("10.0.0.5", 2222, "deploy")
    assert target.identity_files == ("/keys/web",)
    assert target.identities_only is True
    assert target.known_hosts == "/keys/known_hosts"
    assert target.connect_timeout == 7.0
    assert target.server_alive_interval == 15.0


def test_the_plans_explicit_values_win_over_the_config() -> None:
    target = _resolve(
        "web-1",
        address="192.0.2.1",
        port=22,
        user="ops",
        identity_file="/plan/key",
        known_hosts="/plan/kh",
        connect_timeout=3.0,
    )

    assert (target.address, target.port, target.user) == ("192.0.2.1", 22, "ops")
    assert target.identity_files == ("/plan/key",)
    assert (target.known_hosts, target.connect_timeout) == ("/plan/kh", 3.0)


def test_defaults_apply_where_neither_plan_nor_config_say() -> None:
    target = resolve_target(
        "db",
        SshConfig(path=None).entry("db"),
        address="db.example",
        port=None,
        user=None,
        identity_file=None,
        known_hosts=None,
        connect_timeout=None,
    )

    assert (target.address, target.port, target.user, target.known_hosts) == ("db.example", 22, None, None)
    assert (target.connect_timeout, target.identity_files, target.identities_only) == (10.0, (), False)


@pytest.mark.parametrize("alias", ["db-1", "web-9"])
def test_a_host_without_address_or_host_entry_is_an_error_never_localhost(alias: str) -> None:
    with pytest.raises(SshConfigError, match=f"ssh host '{alias}' has no address and no Host entry in /cfg"):
        _resolve(alias)


def test_only_the_catch_all_does_not_place_a_host() -> None:
    assert alias_matched("Host *\n  User x\n", "db") is False
    assert alias_matched("Host db, other\n", "db") is True
    assert alias_matched("Host d?\n", "db") is True
    assert alias_matched("Host * !db\n", "db") is False


# --- validation: file:line:col, exit 2 -------------------------------------------------


def _plan(tmp_path: Path, hosts: str, *, connection: str = "ssh", ssh: str = "") -> Path:
    return write_touch_plan(tmp_path, hosts, ssh=ssh, connection=connection, name="alias-plan")


def test_a_missing_alias_is_a_validation_error_naming_file_line_and_host(tmp_path: Path, cli: Cli) -> None:
    config = tmp_path / "ssh_config"
    config.write_text("Host web\n  HostName 127.0.0.1\n")
    plan = _plan(tmp_path, "      web:\n      nowhere: { groups: [a] }\n", ssh=f"config: {config}")

    result = cli("validate", str(plan))

    assert result.code == 2, result.out + result.err
    assert f"{plan}:9:" in result.out
    assert "environments.lab.hosts.nowhere" in result.out
    assert f"ssh host 'nowhere' has no address and no Host entry in {config}" in result.out
    assert "127.0.0.1" not in result.out


def test_without_a_config_file_an_ssh_host_needs_an_address(
    tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/config at all
    plan = _plan(tmp_path, "      web:\n")

    result = cli("plan", str(plan), "--env", "lab")

    assert result.code == 2
    assert "ssh host 'web' has no address and no ssh config was read" in result.out + result.err


def test_config_none_ignores_the_users_ssh_config(tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh" / "config").write_text("Host web\n  HostName 127.0.0.1\n")
    monkeypatch.setenv("HOME", str(tmp_path))

    assert cli("validate", str(_plan(tmp_path, "      web:\n"))).code == 0
    assert cli("validate", str(_plan(tmp_path, "      web:\n", ssh="config: none"))).code == 2


def test_a_named_config_that_does_not_exist_is_located(tmp_path: Path, cli: Cli) -> None:
    plan = _plan(tmp_path, "      web:\n", ssh=f"config: {tmp_path}/missing")

    result = cli("validate", str(plan))

    assert result.code == 2
    assert f"ssh config {tmp_path}/missing does not exist" in result.out


def test_local_hosts_need_no_address(tmp_path: Path) -> None:
    schedule = prepare_schedule(load_plan(_plan(tmp_path, "      here:\n", connection="local")), "lab")

    assert schedule.hosts["here"].target.connection == "local"


# --- a real sshd reached through an alias ---------------------------------------------


def _alias_config(tmp_path: Path, sshd: SshdServer, known_hosts: str) -> Path:
    config = tmp_path / "ssh_config"
    config.write_text(
        f"""\
Host lab-*
    HostName {sshd.host}
    User {sshd.user}
    Port {sshd.port}
    IdentityFile {sshd.identity_file}
    IdentitiesOnly yes
    UserKnownHostsFile {known_hosts}
    ConnectTimeout 5
    ServerAliveInterval 5
"""
    )
    return config


@pytest.mark.ssh
def test_a_run_reaches_a_host_by_its_ssh_config_alias(tmp_path: Path, sshd: SshdServer, cli: Cli) -> None:
    config = _alias_config(tmp_path, sshd, sshd.known_hosts)
    plan = _plan(tmp_path, "      lab-1:\n", ssh=f"config: {config}")

    result = cli("run", str(plan), "--env", "lab", "--state-dir", str(tmp_path / "state"))

    assert result.code == 0, result.out + result.err
    assert (tmp_path / "lab-1.done").exists()


@pytest.mark.ssh
def test_an_alias_whose_known_hosts_lacks_the_key_is_refused(
    tmp_path: Path, sshd: SshdServer, empty_known_hosts: str, cli: Cli
) -> None:
    config = _alias_config(tmp_path, sshd, empty_known_hosts)
    plan = _plan(tmp_path, "      lab-1:\n", ssh=f"config: {config}")

    result = cli("run", str(plan), "--env", "lab", "--state-dir", str(tmp_path / "state"))

    assert result.code == 3, result.out + result.err
    assert "is not in" in result.out + result.err
    assert empty_known_hosts in result.out + result.err
    assert not (tmp_path / "lab-1.done").exists()


# --- rollout plan shows where each ssh host really connects ------------------------------


def test_plan_shows_the_resolved_user_hostname_port_key_and_known_hosts(
    tmp_path: Path, sshd: SshdServer, cli: Cli
) -> None:
    config = _alias_config(tmp_path, sshd, sshd.known_hosts)
    plan = _plan(tmp_path, "      lab-1:\n      lab-2: { port: 2200, user: ops }\n", ssh=f"config: {config}")

    text = cli("plan", str(plan), "--env", "lab")
    data = cli("plan", str(plan), "--env", "lab", "--json")

    assert text.code == 0, text.out + text.err
    assert (
        f"lab-1 [ssh {sshd.user}@{sshd.host}:{sshd.port}, key {sshd.identity_file} only, "
        f"known_hosts {sshd.known_hosts}]" in text.out
    )
    assert f"lab-2 [ssh ops@{sshd.host}:2200, key {sshd.identity_file} only" in text.out
    target = data.json()["hosts"]["lab-1"]["target"]
    assert (target["address"], target["port"], target["login"]) == (sshd.host, sshd.port, sshd.user)
    assert (target["identity_files"], target["known_hosts"]) == ([sshd.identity_file], sshd.known_hosts)
    assert (target["connect_timeout"], target["server_alive_interval"]) == (5.0, 5.0)


def test_an_unparsable_ssh_config_is_located_at_the_config_option(tmp_path: Path, cli: Cli) -> None:
    config = tmp_path / "ssh_config"
    config.write_text('Host "web\n  HostName 127.0.0.1\n')
    plan = _plan(tmp_path, "      web:\n", ssh=f"config: {config}")

    result = cli("validate", str(plan))

    assert result.code == 2
    assert f"cannot parse ssh config {config}" in result.out
    assert "environments.lab.ssh.config" in result.out


def test_an_unreadable_ssh_config_is_located_at_the_config_option(tmp_path: Path, cli: Cli) -> None:
    plan = _plan(tmp_path, "      web:\n", ssh=f"config: {tmp_path}")  # a directory

    result = cli("validate", str(plan))

    assert result.code == 2
    assert f"cannot read ssh config {tmp_path}: Is a directory" in result.out


# --- a fleet's config is looked up on the blocks that can apply ------------------------

_PATTERNS = st.sampled_from(["web-1", "web-*", "!web-2", "db?", "*", "!*", "db-[12]", "h1", "*-1"])
_OPTIONS = st.sampled_from(
    [
        "User deploy",
        "User ops",
        "Port 2222",
        "IdentityFile /keys/a",
        "IdentityFile /keys/%h",
        "HostName %h.example",
        "ProxyJump bastion",
        "ConnectTimeout 7",
    ]
)
_MATCHES = st.sampled_from(["Match host web-*", "Match user ops", "Match originalhost db?", "Match all"])


@st.composite
def _configs(draw: st.DrawFn) -> str:
    lines = [f"  {o}" for o in draw(st.lists(_OPTIONS, max_size=2))]
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            lines.append("Host " + " ".join(draw(st.lists(_PATTERNS, min_size=1, max_size=3))))
        else:
            lines.append(draw(_MATCHES))
        lines += [f"  {o}" for o in draw(st.lists(_OPTIONS, max_size=3))]
    return "\n".join(lines) + "\n"


@settings(max_examples=150, deadline=None)
@given(text=_configs(), alias=st.sampled_from(["web-1", "web-2", "db1", "db-2", "h1", "other"]))
def test_a_lookup_sees_what_paramiko_sees_in_the_whole_file(text: str, alias: str) -> None:
    import paramiko

    config = SshConfig(path="ssh_config", text=text)
    assert dict(config.entry(alias).options) == dict(paramiko.SSHConfig.from_text(text).lookup(alias))
