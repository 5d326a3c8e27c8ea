"""Pinning what was reviewed: `rollout plan --out plan.lock`, `rollout run plan.lock`, `--expect-digest`.

Invariant: a pinned run executes only when the plan renders now exactly as it did when it
was pinned; anything else is refused with exit 3 before any change (no step runs, no run
directory is made), naming what changed. No secret value ever reaches a lock file.
Every test runs the real CLI in its own process; marker files prove whether a step ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SECRET = "hunter2-cmdline-secret"
ENV_SECRET = "env-sourced-s3cret"

COMMON = """\
vars:
  marker_dir: {markers}
"""

PLAN = """\
name: pinned
includes: [inc/common.yaml]
vars:
  release: v1
  token: {{ value: placeholder, secret: true }}
  api_key: {{ env: PIN_TEST_API_KEY, secret: true }}
environments:
  lab:
    rehearsal: true
    vars: {{ region: eu }}
    hosts:
      h1: {{ groups: [canary] }}
      h2: {{ vars: {{ slot: a }} }}
steps:
  - name: first
    run: touch {{{{ marker_dir }}}}/{{{{ host }}}}-{{{{ release }}}}-{{{{ region }}}} && test -n {{{{ token }}}} && test -n {{{{ api_key }}}}
    rollback: rm -f {{{{ marker_dir }}}}/{{{{ host }}}}-{{{{ release }}}}-{{{{ region }}}}
"""


class Setup:
    """A plan with an include, a marker directory and a state directory, all under tmp_path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.markers = root / "markers"
        self.markers.mkdir()
        self.state = root / "state"
        self.plan = root / "plans" / "plan.yaml"
        (self.plan.parent / "inc").mkdir(parents=True)
        self.plan.write_text(PLAN.format())
        self.include.write_text(COMMON.format(markers=self.markers))
        self.lock = root / "review" / "plan.lock"
        self.lock.parent.mkdir()

    @property
    def include(self) -> Path:
        """The included file (it sets marker_dir)."""
        return self.plan.parent / "inc" / "common.yaml"

    def rollout(self, *args: str, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess[str]:
        """The real CLI in its own process, with the API secret set unless `env` says otherwise (None: unset)."""
        wanted = {"PIN_TEST_API_KEY": ENV_SECRET, "ROLLOUT_STATE_DIR": str(self.state), **(env or {})}
        environ = {k: v for k, v in {**os.environ, **wanted}.items() if v is not None}
        return subprocess.run(
            [sys.executable, "-m", "rollout", *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.root,
            env=environ,
            check=False,
        )

    def pin_it(self, *extra: str, env: dict[str, str | None] | None = None) -> str:
        """`rollout plan --out` the lock; the pin it printed."""
        done = self.rollout("plan", str(self.plan), "--env", "lab", "--out", str(self.lock), *extra, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        pins = [line.removeprefix("pin: ") for line in done.stdout.splitlines() if line.startswith("pin: sha256:")]
        assert len(pins) == 1, done.stdout
        return pins[0]

    def ran(self) -> list[str]:
        """The marker files the step left (one per host it ran on)."""
        return sorted(p.name for p in self.markers.iterdir())

    def run_dirs(self) -> list[Path]:
        """Every run directory made so far."""
        runs = self.state / "runs"
        return sorted(runs.iterdir()) if runs.exists() else []


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def test_a_pinned_plan_runs_from_its_lock_with_the_pinned_environment_and_variables(setup: Setup) -> None:
    pin = setup.pin_it("--var", "release=v2", "--var", f"token={SECRET}")

    done = setup.rollout("run", str(setup.lock), "--var", f"token={SECRET}")

    assert done.returncode == 0, done.stdout + done.stderr
    assert setup.ran() == ["h1-v2-eu", "h2-v2-eu"]
    lock = json.loads(setup.lock.read_text())
    assert lock["rollout-lock"] == 1
    assert lock["pin"] == pin
    assert lock["environment"] == "lab"
    assert lock["plan"]["path"] == "../plans/plan.yaml"
    assert set(lock["plan"]["files"]) == {"plan.yaml", "inc/common.yaml"}
    assert lock["overrides"]["release"] == "v2"
    assert lock["inventory"]["h1"]["groups"] == ["canary"]
    assert set(lock["schedule"]["hosts"]) == {"h1", "h2"}


def test_the_lock_never_holds_a_secret_value(setup: Setup) -> None:
    setup.pin_it("--var", f"token={SECRET}")

    text = setup.lock.read_text()

    assert SECRET not in text
    assert ENV_SECRET not in text
    assert "placeholder" not in text  # the value of the secret written in the plan
    assert json.loads(text)["overrides"]["token"]["secret"].startswith("pbkdf2-sha256:")


def test_a_lock_made_without_the_environments_secret_set_runs_with_it_set(setup: Setup) -> None:
    # a reviewer's machine need not hold production's secrets: they are redacted from the pin
    setup.pin_it(env={"PIN_TEST_API_KEY": None})

    done = setup.rollout("run", str(setup.lock))

    assert done.returncode == 0, done.stdout + done.stderr
    assert setup.ran() == ["h1-v1-eu", "h2-v1-eu"]


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


CHANGES: dict[str, tuple[Callable[[Setup], None], tuple[str, ...], list[str]]] = {
    "plan file": (
        lambda s: _edit(s.plan, "test -n {{ token }}", "test -n {{ token }} && true"),
        (),
        ["file plan.yaml changed", "rendered hosts.h1.steps[0].run"],
    ),
    "include": (
        lambda s: s.include.write_text(COMMON.format(markers=s.markers) + "  extra: 1\n"),
        (),
        ["file inc/common.yaml changed", "variable extra: (unset) -> 1"],
    ),
    "--var": (lambda s: None, ("--var", "release=v3"), ['variable release: "v2" -> "v3"']),
    "environment var in the plan": (
        lambda s: _edit(s.plan, "vars: { region: eu }", "vars: { region: us }"),
        (),
        ["file plan.yaml changed", 'variable region: "eu" -> "us"'],
    ),
    "host added": (lambda s: _edit(s.plan, "      h2:", "      h3: {}\n      h2:"), (), ["host h3 added"]),
    "host removed": (lambda s: _edit(s.plan, "      h2: { vars: { slot: a } }\n", ""), (), ["host h2 removed"]),
    "host moved": (
        lambda s: _edit(s.plan, "h1: { groups: [canary] }", "h1: { groups: [canary], address: 127.0.0.2 }"),
        (),
        ['host h1 changed: address "127.0.0.1" -> "127.0.0.2"'],
    ),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_pinned_run_refuses_whatever_changed_since_and_names_it(setup: Setup, change: str) -> None:
    edit, extra_args, named = CHANGES[change]
    pin = setup.pin_it("--var", "release=v2")
    edit(setup)

    done = setup.rollout("run", str(setup.lock), *extra_args)

    assert done.returncode == 3, done.stdout + done.stderr
    for words in named:
        assert words in done.stderr, done.stderr
    assert f"pinned {pin}" in done.stderr
    assert "nothing was changed" in done.stderr
    assert setup.ran() == []
    assert setup.run_dirs() == []


def test_a_changed_secret_var_is_refused_without_showing_either_value(setup: Setup) -> None:
    setup.pin_it("--var", f"token={SECRET}")

    done = setup.rollout("run", str(setup.lock), "--var", "token=another-secret-value")

    assert done.returncode == 3, done.stdout + done.stderr
    assert "variable token (secret): its value changed (not shown)" in done.stderr
    assert SECRET not in done.stdout + done.stderr
    assert "another-secret-value" not in done.stdout + done.stderr
    assert setup.ran() == []


def test_a_secret_var_pinned_by_hash_must_be_given_again(setup: Setup) -> None:
    setup.pin_it("--var", f"token={SECRET}")

    done = setup.rollout("run", str(setup.lock))

    assert done.returncode == 2, done.stdout + done.stderr
    assert "--var token=..." in done.stderr
    assert setup.ran() == []


def test_a_lock_for_one_environment_is_refused_for_another(setup: Setup) -> None:
    setup.pin_it()

    done = setup.rollout("run", str(setup.lock), "--env", "production")

    assert done.returncode == 2, done.stdout + done.stderr
    assert "pins environment 'lab', not 'production'" in done.stderr
    assert setup.ran() == []


def test_expect_digest_runs_the_plan_that_renders_to_it(setup: Setup) -> None:
    pin = setup.pin_it("--var", "release=v2")

    done = setup.rollout("run", str(setup.plan), "--env", "lab", "--var", "release=v2", "--expect-digest", pin)

    assert done.returncode == 0, done.stdout + done.stderr
    assert setup.ran() == ["h1-v2-eu", "h2-v2-eu"]


def test_expect_digest_refuses_a_plan_that_renders_otherwise_showing_both_pins(setup: Setup) -> None:
    pin = setup.pin_it("--var", "release=v2")

    done = setup.rollout("run", str(setup.plan), "--env", "lab", "--var", "release=v3", "--expect-digest", pin)

    assert done.returncode == 3, done.stdout + done.stderr
    now = setup.rollout("plan", str(setup.plan), "--env", "lab", "--var", "release=v3", "--json").stdout
    document = json.loads(now)
    assert f"pinned {pin}" in done.stderr
    assert f"now    {document['pin']} (plan digest {document['digest']})" in done.stderr
    assert setup.ran() == []
    assert setup.run_dirs() == []


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("this is { not json", "not a lock file (not JSON"),
        ('{"rollout-lock": 2, "pin": "sha256:00"}', "lock file format 2, this rollout reads format 1"),
        ('{"pin": "sha256:00"}', 'not a lock file (no "rollout-lock" format marker)'),
    ],
    ids=["not-json", "other-format", "no-marker"],
)
def test_a_file_that_is_not_a_lock_of_this_format_is_a_usage_error_naming_it(
    setup: Setup, content: str, says: str
) -> None:
    bad = setup.root / "bad.lock"
    bad.write_text(content)

    done = setup.rollout("run", str(bad))

    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{bad}: {says}" in done.stderr
    assert setup.run_dirs() == []


def test_plan_prints_the_same_pin_as_text_json_and_lock(setup: Setup) -> None:
    pin = setup.pin_it("--var", "release=v2")

    text = setup.rollout("plan", str(setup.plan), "--env", "lab", "--var", "release=v2")
    as_json = setup.rollout("plan", str(setup.plan), "--env", "lab", "--var", "release=v2", "--json")

    assert f"pin: {pin}" in text.stdout.splitlines()
    assert json.loads(as_json.stdout)["pin"] == pin
    assert json.loads(setup.lock.read_text())["pin"] == pin


def test_expect_digest_takes_the_bare_hex_too(setup: Setup) -> None:
    pin = setup.pin_it()

    done = setup.rollout("run", str(setup.plan), "--env", "lab", "--expect-digest", pin.removeprefix("sha256:"))

    assert done.returncode == 0, done.stdout + done.stderr
    assert setup.ran() == ["h1-v1-eu", "h2-v1-eu"]


def test_expect_digest_needs_the_environment(setup: Setup) -> None:
    done = setup.rollout("run", str(setup.plan), "--expect-digest", "sha256:00")

    assert done.returncode == 2, done.stdout + done.stderr
    assert "--expect-digest needs --env" in done.stderr


def test_plan_out_never_overwrites_one_of_the_plans_files(setup: Setup) -> None:
    before = setup.include.read_bytes()

    done = setup.rollout("plan", str(setup.plan), "--env", "lab", "--out", str(setup.include))

    assert done.returncode == 2, done.stdout + done.stderr
    assert "one of the plan's own files" in done.stderr
    assert setup.include.read_bytes() == before


def test_a_plan_variable_built_from_host_variables_pins_and_runs(tmp_path: Path) -> None:
    """`gateway: http://...:{{ port }}` with `port` set per host: the lock says so and the pinned run runs."""
    setup = Setup(tmp_path)
    setup.plan.write_text(
        PLAN.format()
        .replace("  release: v1\n", "  release: v1\n  target: '{{ host }}-{{ slot }}'\n")
        .replace("h1: { groups: [canary] }", "h1: { groups: [canary], vars: { slot: b } }")
    )
    setup.pin_it()
    lock = json.loads(setup.lock.read_text())
    assert lock["variables"]["target"] == {"per_host": True}
    done = setup.rollout("run", str(setup.lock), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert setup.ran() == ["h1-v1-eu", "h2-v1-eu"]


def test_the_same_files_checked_out_elsewhere_run_from_the_lock(tmp_path: Path) -> None:
    """A lock written in one checkout runs in another (each CI job has its own workspace)."""
    import shutil

    (tmp_path / "laptop").mkdir()
    setup = Setup(tmp_path / "laptop")
    setup.plan.write_text(
        PLAN.format().replace("&& test -n {{ token }}", "&& test -d {{ plan_dir }} && test -n {{ token }}")
    )
    setup.pin_it()
    ci = tmp_path / "ci-workspace"
    shutil.copytree(setup.root / "plans", ci / "plans")
    shutil.copytree(setup.root / "review", ci / "review")
    done = setup.rollout("run", str(ci / "review" / "plan.lock"), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert setup.ran() == ["h1-v1-eu", "h2-v1-eu"]
    lock = (ci / "review" / "plan.lock").read_text()
    assert str(setup.root) not in lock.replace(str(setup.markers), ""), "the lock names no checkout path"
