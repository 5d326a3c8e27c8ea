"""Hostile input costs a bounded amount and ends in a located error, never a hang or a guess.

Invariants under test:
- rendering is bounded: one value at most MAX_VALUE_CHARS, one plan at most MAX_RENDER_CHARS
  of substitution, refused (exit 2) before the text is built, naming the variable and where;
- durations are finite and within their documented bounds, on the command line too;
- a `--var` that the plan neither defines nor uses is refused (exit 2), naming the closest;
- `ssh:` options and a host's address are rendered per host like every other field;
- only regular files are read as plans or includes: a FIFO cannot block validate.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from textwrap import dedent

import pytest

from rollout.engine.prepare import prepare_schedule, validate_environments
from rollout.errors import PlanError
from rollout.planfile import load_plan
from rollout.template import MAX_RENDER_CHARS, MAX_VALUE_CHARS
from tests.conftest_sshd import SshdServer
from tests.helpers import Cli

GOOD = """\
name: demo-plan
vars:
  release: v1
  region: eu
environments:
  demo:
    hosts:
      a: {}
steps:
  - name: first
    run: echo {{ release }} {{ region }} {{ build }}
    rollback: echo undo
"""


def _write(tmp_path: Path, text: str, name: str = "plan.yaml") -> Path:
    path = tmp_path / name
    path.write_text(dedent(text).lstrip("\n"))
    return path


def _nested_bomb(levels: int = 8) -> str:
    """`a1` is ten `{{a0}}`, `a2` ten `{{a1}}`, ...: 10**levels copies of a0 if expanded."""
    lines = ["name: bomb", "vars:", '  a0: "xxxxxxxxxx"']
    lines += [f'  a{i}: "' + f"{{{{a{i - 1}}}}}" * 10 + '"' for i in range(1, levels + 1)]
    lines += [
        "environments:",
        "  demo:",
        "    hosts:",
        "      a: {}",
        "steps:",
        "  - name: s",
        f"    run: echo {{{{ a{levels} }}}}",
        "    rollback: none",
    ]
    return "\n".join(lines) + "\n"


# --- 1. template expansion is bounded ------------------------------------------------


def test_nested_variable_bomb_fails_fast_naming_the_variable_where_it_is_defined(tmp_path: Path) -> None:
    plan = _write(tmp_path, _nested_bomb())
    # CPU time, which other load on the machine does not inflate (the old code spent minutes)
    tracemalloc.start()
    started = time.process_time()
    try:
        problems = validate_environments(load_plan(plan))
        elapsed = time.process_time() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert len(problems) == 1
    text = problems[0].render()
    # a5 is 10**6 characters, under the limit; a6 would be ten times that
    assert f"{plan}:9:3: error at vars.a6: variable 'a6' renders to more than {MAX_VALUE_CHARS} characters" in text
    assert "environment 'demo', host 'a'" in text
    assert elapsed < 1.0
    assert peak < 64 * 1024 * 1024


def test_nested_variable_bomb_is_exit_2_from_validate(tmp_path: Path, cli: Cli) -> None:
    plan = _write(tmp_path, _nested_bomb())

    result = cli("validate", str(plan))

    assert result.code == 2
    assert f"{plan}:9:3: error at vars.a6: variable 'a6'" in result.out


def test_a_field_over_the_value_limit_is_located_at_the_field(tmp_path: Path) -> None:
    # a5 (10**6 characters) is allowed, two of them in one command are not
    text = _nested_bomb(5).replace("run: echo {{ a5 }}", "run: echo {{ a5 }}{{ a5 }}")
    plan = _write(tmp_path, text)

    with pytest.raises(PlanError) as caught:
        prepare_schedule(load_plan(plan), "demo")

    assert f"{plan}:15:5: error at steps[0].run: renders to more than {MAX_VALUE_CHARS}" in caught.value.render()


def test_an_oversized_var_given_on_the_command_line_says_so(tmp_path: Path, cli: Cli) -> None:
    text = _nested_bomb(5).replace("run: echo {{ a5 }}", "run: echo {{ big }}")
    plan = _write(tmp_path, text)

    result = cli("validate", str(plan), "--var", "big={{ a5 }}{{ a5 }}")

    assert result.code == 2
    assert f"variable 'big' (given with --var) renders to more than {MAX_VALUE_CHARS} characters" in result.out


def test_total_rendering_work_for_a_plan_is_bounded(tmp_path: Path) -> None:
    # every value is under the per-value limit, but 80 hosts x ~2 MB each is over the plan's
    hosts = "".join(f"      h{i}: {{}}\n" for i in range(80))
    text = _nested_bomb(5).replace("      a: {}\n", hosts)
    plan = _write(tmp_path, text)
    started = time.process_time()

    problems = validate_environments(load_plan(plan))

    assert time.process_time() - started < 5.0
    assert len(problems) == 1
    assert f"passes the plan's rendering limit: more than {MAX_RENDER_CHARS} characters" in problems[0].render()


# --- 2. durations on the command line -----------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--grace", "99999999999999999999999h", "is too long: at most 168h"),
        ("--lock-timeout", "99999999999999999999999h", "is too long: at most 168h"),
        ("--grace", "1e400s", "is not a duration"),
    ],
)
def test_an_absurd_duration_option_is_a_usage_error_before_anything_runs(
    tmp_path: Path, cli: Cli, option: str, value: str, message: str
) -> None:
    marker = tmp_path / "ran"
    plan = _write(tmp_path, GOOD.replace("run: echo {{ release }} {{ region }} {{ build }}", f"run: touch {marker}"))

    result = cli("run", str(plan), "--env", "demo", "--yes", "--state-dir", str(tmp_path / "state"), option, value)

    assert result.code == 2
    assert message in result.err
    assert not marker.exists()


# --- 4. unknown --var names ---------------------------------------------------------


@pytest.mark.parametrize("command", ["validate", "plan", "run"])
def test_an_unknown_var_is_exit_2_naming_the_closest_variable(tmp_path: Path, cli: Cli, command: str) -> None:
    plan = _write(tmp_path, GOOD)
    args = [command, str(plan), "--var", "relase=v2", "--var", "build=7"]
    if command != "validate":
        args += ["--env", "demo"]
    if command == "run":
        args += ["--yes", "--state-dir", str(tmp_path / "state")]

    result = cli(*args)

    assert result.code == 2, result.out + result.err
    output = result.out + result.err
    assert "--var relase: the plan neither defines nor uses a variable 'relase' (did you mean 'release'?)" in output
    assert not (tmp_path / "state" / "runs").exists() or not any((tmp_path / "state" / "runs").iterdir())


def test_a_var_the_plan_only_uses_in_a_template_is_accepted(tmp_path: Path, cli: Cli) -> None:
    plan = _write(tmp_path, GOOD)

    result = cli("plan", str(plan), "--env", "demo", "--var", "build=7", "--var", "release=v2")

    assert result.code == 0, result.err
    assert "run:      echo v2 eu 7" in result.out


def test_a_var_that_resembles_nothing_lists_the_plans_variables(tmp_path: Path, cli: Cli) -> None:
    plan = _write(tmp_path, GOOD)

    result = cli("validate", str(plan), "--var", "zzz=1")

    assert result.code == 2
    assert "variable 'zzz' (its variables: build, region, release)" in result.out


def test_a_builtin_cannot_be_set_with_var(tmp_path: Path, cli: Cli) -> None:
    plan = _write(tmp_path, GOOD)

    result = cli("plan", str(plan), "--env", "demo", "--var", "build=1", "--var", "host=evil")

    assert result.code == 2
    assert "'host' is a built-in variable and cannot be set" in result.err


# --- 5. ssh options are rendered per host -------------------------------------------


SSH_TEMPLATED = """\
name: ssh-templated
vars:
  keys: /etc/keys
environments:
  lab:
    connection: ssh
    vars: { ops: deploy }
    ssh:
      user: "{{ ops }}"
      identity_file: "{{ keys }}/{{ host }}.key"
      known_hosts: "{{ keys }}/known_hosts"
    hosts:
      node-a: { address: "{{ host }}.lab.example", user: "{{ ops }}-a" }
      node-b: { address: "10.0.0.{{ n }}", vars: { n: 7 } }
steps:
  - name: s
    run: "true"
    rollback: none
"""


def test_ssh_options_and_addresses_are_rendered_for_each_host(tmp_path: Path) -> None:
    plan = _write(tmp_path, SSH_TEMPLATED)

    schedule = prepare_schedule(load_plan(plan), "lab")

    a, b = schedule.hosts["node-a"].target, schedule.hosts["node-b"].target
    assert (a.address, a.user, a.identity_file, a.known_hosts) == (
        "node-a.lab.example",
        "deploy-a",
        "/etc/keys/node-a.key",
        "/etc/keys/known_hosts",
    )
    assert (b.address, b.user, b.identity_file) == ("10.0.0.7", "deploy", "/etc/keys/node-b.key")


def test_an_undefined_variable_in_an_ssh_option_is_located(tmp_path: Path, cli: Cli) -> None:
    plan = _write(tmp_path, SSH_TEMPLATED.replace('"{{ keys }}/known_hosts"', '"{{ kh }}"'))

    result = cli("validate", str(plan))

    assert result.code == 2
    assert f"{plan}:11:7: error at environments.lab.ssh.known_hosts: undefined variable 'kh'" in result.out


@pytest.mark.ssh
def test_a_run_reaches_ssh_hosts_through_templated_ssh_options(tmp_path: Path, sshd: SshdServer, cli: Cli) -> None:
    work = tmp_path / "remote"
    work.mkdir()
    plan = _write(
        tmp_path,
        f"""
        name: ssh-templated-run
        vars:
          kh: "{sshd.known_hosts}"
          key: "{sshd.identity_file}"
          who: "{sshd.user}"
        environments:
          lab:
            rehearsal: true
            connection: ssh
            ssh:
              user: "{{{{ who }}}}"
              port: {sshd.port}
              identity_file: "{{{{ key }}}}"
              known_hosts: "{{{{ kh }}}}"
              connect_timeout: 5s
            hosts:
              node-a: {{ address: 127.0.0.1 }}
        steps:
          - name: touch
            run: touch {work}/{{{{ host }}}}.done
            rollback: rm -f {work}/{{{{ host }}}}.done
        """,
    )

    result = cli("run", str(plan), "--env", "lab", "--state-dir", str(tmp_path / "state"))

    assert result.code == 0, result.out + result.err
    assert (work / "node-a.done").exists()


# --- 6. only regular files are read -------------------------------------------------


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (1024 * 1024 * 1024, 1024 * 1024 * 1024))


def _validate_in_a_subprocess(plan: Path | str) -> subprocess.CompletedProcess[str]:
    # a subprocess with a deadline and a memory cap, so that a blocking open or an endless
    # read fails this test instead of hanging the suite or exhausting the machine
    return subprocess.run(
        [sys.executable, "-m", "rollout", "validate", str(plan)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        preexec_fn=_limit_memory,
    )


def test_an_include_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    plan = _write(tmp_path, GOOD.replace("vars:\n", "includes: [steps.yaml]\nvars:\n", 1))
    os.mkfifo(tmp_path / "steps.yaml")

    done = _validate_in_a_subprocess(plan)

    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{plan}:2:12: error at includes[0]: include 'steps.yaml' is a FIFO (named pipe), not a regular file" in (
        done.stdout
    )


def test_a_plan_that_is_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    os.mkfifo(plan)

    done = _validate_in_a_subprocess(plan)

    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{plan}: error: is a FIFO (named pipe), not a regular file" in done.stdout


def test_a_device_is_not_read_as_a_plan() -> None:
    # /dev/zero reports size 0 and never ends: reading it would fill memory
    done = _validate_in_a_subprocess("/dev/zero")

    assert done.returncode == 2, done.stdout + done.stderr
    assert "/dev/zero: error: is a device, not a regular file" in done.stdout
