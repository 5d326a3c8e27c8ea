"""Shared helpers for the engine tests: a private exchange fleet, a plan writer, journal reading.

Every test starts its own fleet on free ports (never the demo fleet on 18081-18084) and
writes its plan into its own tmp_path, with absolute paths to the example metadata.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from examples.exchange.fleet import GatewayInfo, start_fleet, stop_fleet

REPO = Path(__file__).resolve().parent.parent
METADATA = REPO / "examples" / "exchange" / "metadata"
V1 = METADATA / "v1.json"
V2 = METADATA / "v2.json"
RUNTIME_BREAK = METADATA / "v2-runtime-break.json"
CTL = REPO / "examples" / "exchange" / "ctl.py"
ROLLOUT = REPO / ".venv" / "bin" / "rollout"


@dataclass
class Fleet:
    """A running fleet of toy gateways under `root`."""

    root: Path
    gateways: list[GatewayInfo]

    @property
    def hosts(self) -> list[str]:
        """Host names, gw-1 first."""
        return [g.host for g in self.gateways]

    def gateway(self, host: str) -> GatewayInfo:
        """The gateway of one host."""
        return next(g for g in self.gateways if g.host == host)

    def live_doc(self, host: str) -> Any:
        """The live metadata file of a host, parsed."""
        return json.loads(self.gateway(host).metadata.read_text())

    def served_doc(self, host: str) -> Any:
        """What the gateway serves at /metadata, parsed."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.gateway(host).port}/metadata", timeout=2) as resp:
            return json.loads(resp.read())

    def probe_ok(self, host: str) -> bool:
        """Whether the gateway's order-flow probe is green."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.gateway(host).port}/probe", timeout=2) as resp:
                return bool(json.loads(resp.read()).get("ok"))
        except OSError:
            return False

    def is_at(self, host: str, release: Path) -> bool:
        """True when both the live file and the served document equal `release`."""
        want = json.loads(release.read_text())
        return self.live_doc(host) == want and self.served_doc(host) == want

    def untouched(self, host: str) -> bool:
        """At v1 with no staged or saved copies left beside the live file."""
        live = self.gateway(host).metadata
        return self.is_at(host, V1) and not Path(f"{live}.next").exists() and not Path(f"{live}.prev").exists()


@contextlib.contextmanager
def running_fleet(root: Path, count: int) -> Iterator[Fleet]:
    """Start `count` gateways at v1 on free ports; stop them afterwards."""
    gateways = start_fleet(root, count, base_port=0, metadata=V1)
    try:
        yield Fleet(root.resolve(), gateways)
    finally:
        stop_fleet(root)


@dataclass
class PlanSpec:
    """The knobs the engine tests turn on an exchange upgrade plan."""

    release: Path = V2
    waves: Sequence[int | str] = (1, 2, "100%")
    bake: str = "200ms"
    failure_budget: int | str = 0
    concurrency: int = 4
    guard_every: str = "100ms"
    guard_fail_after: int = 3
    guard: bool = True
    probe_verify: bool = True
    # steps after activate-release: dicts with name, run, rollback and optional verify/timeout
    extra_steps: list[dict[str, Any]] = field(default_factory=list)
    prechecks: list[dict[str, Any]] = field(default_factory=list)
    # host -> extra host vars (e.g. {"gw-3": {"fail_here": "yes"}})
    host_vars: dict[str, dict[str, str]] = field(default_factory=dict)
    env_vars: dict[str, str] = field(default_factory=dict)
    activate_rollback_prefix: str = ""
    activate_verify_extra: list[dict[str, Any]] = field(default_factory=list)


def exchange_plan(fleet: Fleet, spec: PlanSpec) -> dict[str, Any]:
    """The demo upgrade plan (stage, activate with read-back) for this fleet, as a dict."""
    live = f"{fleet.root}/{{{{ host }}}}/metadata.json"
    ctl = f"{sys.executable} {CTL}"
    hosts = {
        g.host: {"vars": {"port": g.port, **spec.host_vars.get(g.host, {})}, "groups": ["canary"] if i == 0 else []}
        for i, g in enumerate(fleet.gateways)
    }
    verify: list[dict[str, Any]] = [
        {
            "name": "gateway serves exactly the release (read-back)",
            "metadata": {"source": {"url": "{{ gateway }}/metadata"}, "equals": {"file": str(spec.release)}},
            "retries": 3,
            "interval": "100ms",
        }
    ]
    if spec.probe_verify:
        verify.append(
            {
                "name": "order flow is green",
                "http": {"url": "{{ gateway }}/probe", "json": {"$.ok": True}},
                "timeout": "2s",
            }
        )
    verify.extend(spec.activate_verify_extra)
    plan: dict[str, Any] = {
        "version": 1,
        "name": "exchange-upgrade",
        "vars": {
            "live": live,
            "gateway": "http://127.0.0.1:{{ port }}",
            "fail_here": "no",
            "state": str(fleet.root),
            **spec.env_vars,
        },
        "environments": {"demo": {"rehearsal": True, "connection": "local", "hosts": hosts}},
        "prechecks": [
            {"name": "gateway answers", "http": {"url": "{{ gateway }}/health", "status": 200}, "timeout": "2s"},
            *spec.prechecks,
        ],
        "guards": [
            {
                "name": "order flow",
                "http": {"url": "{{ gateway }}/probe", "json": {"$.ok": True}},
                "every": spec.guard_every,
                "timeout": "1s",
                "fail_after": spec.guard_fail_after,
            }
        ]
        if spec.guard
        else [],
        "strategy": {
            "waves": list(spec.waves),
            "bake": spec.bake,
            "failure_budget": spec.failure_budget,
            "concurrency": spec.concurrency,
        },
        "steps": [
            {
                "name": "stage-release",
                "run": f"cp {spec.release} {{{{ live }}}}.next",
                "rollback": "rm -f {{ live }}.next",
                "timeout": "10s",
            },
            {
                "name": "activate-release",
                "run": "cp {{ live }} {{ live }}.prev && mv {{ live }}.next {{ live }} && "
                f"{ctl} reload --port {{{{ port }}}}",
                "verify": verify,
                # Safe on a step that never completed: restore only what was saved.
                "rollback": spec.activate_rollback_prefix + "if [ -f {{ live }}.prev ]; then "
                "mv {{ live }}.prev {{ live }}; fi && rm -f {{ live }}.next && "
                f"{ctl} reload --port {{{{ port }}}}",
                "timeout": "10s",
            },
            *spec.extra_steps,
        ],
    }
    return plan


def write_plan(path: Path, plan: dict[str, Any]) -> Path:
    """Write a plan dict as YAML (JSON is YAML) and return its path."""
    path.write_text(json.dumps(plan, indent=2) + "\n")
    return path


def write_touch_plan(
    tmp_path: Path, hosts: str, *, ssh: str = "", connection: str = "ssh", name: str = "touch-plan"
) -> Path:
    """tmp_path/plan.yaml: environment `lab` (a rehearsal) of `hosts` (YAML lines under `hosts:`), whose
    one step touches tmp_path/HOST.done and whose rollback removes it; `ssh` is the inside of `ssh: {}`."""
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"""\
name: {name}
environments:
  lab:
    rehearsal: true
    connection: {connection}
    ssh: {{ {ssh} }}
    hosts:
{hosts}
steps:
  - name: touch
    run: touch {tmp_path}/{{{{ host }}}}.done
    rollback: rm -f {tmp_path}/{{{{ host }}}}.done
"""
    )
    return plan


def write_exchange_plan(tmp_path: Path, fleet: Fleet, spec: PlanSpec | None = None, name: str = "plan.yaml") -> Path:
    """Write the exchange upgrade plan for this fleet into tmp_path."""
    return write_plan(tmp_path / name, exchange_plan(fleet, spec or PlanSpec()))


# --- running the CLI ------------------------------------------------------------------


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a CLI subprocess: no colour, no forced terminal."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "ROLLOUT_STATE_DIR")}
    env.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200", **extra})
    return env


def rollout(
    *args: str | Path, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the rollout CLI as a real process and wait for it."""
    return subprocess.run(
        [str(ROLLOUT), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or cli_env(),
        stdin=subprocess.DEVNULL,
        check=False,
    )


def start_rollout(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start the rollout CLI as a real process (for signals)."""
    return subprocess.Popen(
        [str(ROLLOUT), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env or cli_env(),
    )


def run_args(plan: Path, state: Path, *extra: str) -> list[str]:
    """`run PLAN --env demo --state-dir STATE ...`."""
    return ["run", str(plan), "--env", "demo", "--state-dir", str(state), *extra]


# --- the journal ----------------------------------------------------------------------


def journal_path(state: Path, run_id: str | None = None) -> Path:
    """The journal of a run (the only run when run_id is None)."""
    runs = sorted((state / "runs").iterdir())
    if run_id is None:
        assert len(runs) == 1, f"expected one run, found {[r.name for r in runs]}"
        return runs[0] / "journal.jsonl"
    return state / "runs" / run_id / "journal.jsonl"


def run_id_of(state: Path) -> str:
    """The id of the only run in `state`."""
    return journal_path(state).parent.name


def events(state: Path, run_id: str | None = None) -> list[dict[str, Any]]:
    """The journal's events as dicts (complete lines only)."""
    path = journal_path(state, run_id)
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def kinds(evts: Sequence[dict[str, Any]]) -> list[str]:
    """The kinds of the events, in order."""
    return [e["kind"] for e in evts]


def wait_for_event(
    state: Path,
    predicate: Callable[[dict[str, Any]], bool],
    *,
    timeout: float = 20,
    proc: subprocess.Popen[str] | None = None,
) -> dict[str, Any]:
    """Poll the only run's journal until an event matches; fail on timeout or if `proc` exits.

    Each poll reads only what was appended since the last one: re-reading a journal of
    thousands of events every 20 ms took a core from the very run being watched.
    """
    deadline = time.monotonic() + timeout
    offset, partial = 0, b""
    while time.monotonic() < deadline:
        runs = state / "runs"
        if runs.is_dir() and any(runs.iterdir()):
            with contextlib.suppress(FileNotFoundError, AssertionError):
                with journal_path(state).open("rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
                offset += len(chunk)
                *lines, partial = (partial + chunk).split(b"\n")
                for line in lines:
                    try:
                        event: dict[str, Any] = json.loads(line)
                    except ValueError:
                        continue
                    if predicate(event):
                        return event
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"rollout exited {proc.returncode} before the event\n{out}\n{err}")
        time.sleep(0.02)
    raise AssertionError("timed out waiting for a journal event")


def wait_for_file(path: Path, *, timeout: float = 20, proc: subprocess.Popen[str] | None = None) -> str:
    """Poll until a file a step writes has a complete line; fail on timeout or if `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            text = path.read_text()
            if text.endswith("\n"):
                return text
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"rollout exited {proc.returncode} before {path} was written\n{out}\n{err}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {path}")


def is_event(kind: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    """A predicate: the event has this kind and these field values."""
    return lambda e: e["kind"] == kind and all(e.get(k) == v for k, v in fields.items())


def rollback_order(evts: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """Host -> the steps whose rollback intent was journaled, in journal order."""
    out: dict[str, list[str]] = {}
    for e in evts:
        if e["kind"] == "rollback.intent":
            out.setdefault(e["host"], []).append(e["step"])
    return out


def started_steps(evts: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
    """Host -> the steps whose intent was journaled, first attempt only, in order."""
    out: dict[str, list[str]] = {}
    for e in evts:
        if e["kind"] == "step.intent" and e["step"] not in out.get(e["host"], []):
            out.setdefault(e["host"], []).append(e["step"])
    return out


def pid_alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    return True


def kill_pidfile(path: Path) -> None:
    """Kill the process (group) whose pid a step wrote, if it still runs."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(path.read_text().strip())
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@dataclass(frozen=True)
class Result:
    """What a user sees from one in-process CLI command."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        """stdout parsed as JSON."""
        return json.loads(self.out)


Cli = Callable[..., Result]


def marked_pids(run_id: str) -> list[int]:
    """Live processes on this machine whose environment names `run_id` (what recover must end)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"ROLLOUT_RUN={run_id}".encode() in environ and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found
