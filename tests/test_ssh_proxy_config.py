"""Where ProxyJump and ProxyCommand lead: the pure resolution of hops and proxy commands, and plan validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollout.executors.base import Target
from rollout.executors.ssh_config import HostEntry, SshConfig, SshConfigError, parse_hop, resolve_target
from tests.helpers import Cli

CONFIG = """\
Host inner
    HostName 10.0.0.2
    ProxyJump ops@jump:2200,jump2
    ProxyCommand never used
Host cmd-first
    ProxyCommand nc %h %p
    ProxyJump never-used
Host jump
    HostName 192.0.2.1
    User deploy
    Port 2222
    IdentityFile /keys/jump
    UserKnownHostsFile /keys/jump_known
Host *
    User everyone
"""


def _resolve(alias: str, **plan: object) -> Target:
    config = SshConfig(path="/cfg", text=CONFIG)
    values: dict[str, object] = dict.fromkeys(
        ("address", "port", "user", "identity_file", "known_hosts", "connect_timeout")
    )
    values.update(plan)
    return resolve_target(alias, config.entry(alias), lookup=config.entry, **values)  # type: ignore[arg-type]


def test_each_jump_host_is_placed_through_its_own_host_entry() -> None:
    target = _resolve("inner", known_hosts="/plan/known", identity_file="/plan/key")

    first, second = target.jumps
    # the hop's own user and port win over its entry, which gives the address, key and known_hosts
    assert (first.name, first.address, first.port, first.user) == ("jump", "192.0.2.1", 2200, "ops")
    assert (first.identity_files, first.known_hosts) == (("/keys/jump",), "/keys/jump_known")
    # a hop without an entry of its own: the address as written, the plan's key and known_hosts
    assert (second.name, second.address, second.port, second.user) == ("jump2", "jump2", 22, "everyone")
    assert (second.identity_files, second.known_hosts) == (("/plan/key",), "/plan/known")
    assert second.jumps == (first,)
    assert target.proxy_command is None


def test_whichever_of_proxy_jump_and_proxy_command_comes_first_in_the_config_wins() -> None:
    assert _resolve("inner").proxy_command is None
    target = _resolve("cmd-first")
    assert (target.jumps, target.proxy_command) == ((), "nc cmd-first 22")


def test_the_plans_proxy_command_has_its_tokens_expanded_from_the_final_values() -> None:
    target = _resolve("inner", proxy_command="ssh -W %h:%p -l %r gw %%", port=2022, user="ops")

    assert (target.jumps, target.proxy_command) == ((), "ssh -W 10.0.0.2:2022 -l ops gw %")
    assert _resolve("cmd-first", proxy_jump="none").proxy_command is None


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("bastion", (None, "bastion", None)),
        ("ops@bastion:2222", ("ops", "bastion", 2222)),
        ("ssh://ops@[::1]:2200", ("ops", "::1", 2200)),
        ("u@ex@host", ("u@ex", "host", None)),
    ],
)
def test_a_hop_is_user_host_and_port(spec: str, expected: tuple[str | None, str, int | None]) -> None:
    assert parse_hop(spec) == expected


@pytest.mark.parametrize("spec", ["@host", "host:port", "host:70000", ""])
def test_a_malformed_hop_is_an_error(spec: str) -> None:
    with pytest.raises(SshConfigError):
        parse_hop(spec)


def test_an_empty_hop_in_the_list_is_an_error() -> None:
    entry = HostEntry(config_path=None, matched=False)
    with pytest.raises(SshConfigError, match="empty hop"):
        resolve_target(
            "web",
            entry,
            address="10.0.0.1",
            port=None,
            user=None,
            identity_file=None,
            known_hosts=None,
            connect_timeout=None,
            proxy_jump="a,,b",
        )


def test_proxy_jump_and_proxy_command_together_in_the_plan_are_a_located_error(tmp_path: Path, cli: Cli) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        """\
name: both
environments:
  lab:
    connection: ssh
    hosts:
      web:
        address: 10.0.0.1
        proxy_jump: bastion
        proxy_command: nc %h %p
steps:
  - name: s
    run: "true"
    rollback: none
"""
    )

    result = cli("validate", str(plan))

    assert result.code == 2, result.out
    assert f"{plan}:6:7: error at environments.lab.hosts.web" in result.out
    assert "set at most one of proxy_jump and proxy_command" in result.out


def test_a_malformed_hop_in_the_plan_is_a_located_error(tmp_path: Path, cli: Cli) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        """\
name: badhop
environments:
  lab:
    connection: ssh
    ssh: { config: none, proxy_jump: "ops@bastion:22x" }
    hosts:
      web: { address: 10.0.0.1 }
steps:
  - name: s
    run: "true"
    rollback: none
"""
    )

    result = cli("validate", str(plan))

    assert result.code == 2, result.out
    assert f"{plan}:7:" in result.out
    assert "ProxyJump hop 'ops@bastion:22x': port '22x' is not a number" in result.out
