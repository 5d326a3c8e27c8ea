"""`rollout demo`: replay the metadata-upgrade incident on a local toy exchange.

Four order gateways on 127.0.0.1 serve instrument metadata v1. Three releases go out
through the same plan, plans/order-gateway-metadata.yaml:

1. a release with a renamed field: the metadata pre-check refuses it; nothing changes;
2. the incident: a release that passes schema and invariants but breaks order entry
   at run time; the canary takes it, the order-flow guard sees orders fail, and every
   applied step is rolled back automatically; the report gives the impact window;
3. the good v2 release: canary, then half, then all, with bake times, succeeds.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Annotated

import typer

from rollout.cli.app import StateDirOption, app, fail, terminal
from rollout.errors import ExitStatus, RolloutError, UsageError
from rollout.exits import exit_status_for

REPO = Path(__file__).resolve().parents[2]
PLAN = REPO / "plans" / "order-gateway-metadata.yaml"
FLEET = REPO / "examples" / "exchange" / "fleet.py"
ORIGINAL_IMPACT_S = 22 * 60 + 30
DEMO_ROOT = Path(tempfile.gettempdir()) / "rollout-demo" / "fleet"


@dataclass(frozen=True)
class Act:
    """One release pushed through the plan, and the outcome the story expects."""

    title: str
    release: str
    expected: ExitStatus
    story: str


ACTS = (
    Act(
        "a broken release is refused before anything changes",
        "v2-renamed-field",
        ExitStatus.REFUSED,
        "tick_size was renamed: the schema and bounds pre-check rejects it on every host",
    ),
    Act(
        "the incident: metadata that breaks order entry at run time",
        "v2-runtime-break",
        ExitStatus.ROLLED_BACK,
        "passes every pre-check; the canary takes it, orders fail, the guard trips, rollback is automatic",
    ),
    Act(
        "the good release goes out wave by wave",
        "v2",
        ExitStatus.SUCCESS,
        "canary, bake, half the fleet, bake, the rest",
    ),
)


def _load_fleet_module() -> ModuleType:
    if not FLEET.exists():
        raise UsageError(f"{FLEET}: the demo needs the source checkout (examples/exchange is not installed)")
    spec = importlib.util.spec_from_file_location("rollout_demo_fleet", FLEET)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _impact(run_id: str, state: Path) -> tuple[float | None, float | None]:
    """(impact window, detection time) in seconds, from the journal's guard events."""
    from rollout import api

    records = list(api.timeline(run_id, state_dir=state))
    first_fail = next((r for r in records if r.kind == "guard.state" and r.outcome == "failing"), None)
    tripped = next((r for r in records if r.kind == "guard.state" and r.outcome == "tripped"), None)
    green = next((r for r in records if r.kind == "recovery.guards" and r.outcome == "green"), None)
    if first_fail is None:
        return None, None
    window = (green.mono - first_fail.mono) if green else None
    detect = (tripped.mono - first_fail.mono) if tripped else None
    return window, detect


def _play(act: Act, root: Path, state: Path) -> tuple[int, str | None]:
    """Push one release through the plan, as `rollout run` would; (exit code, run id once the run began)."""
    from rollout import api
    from rollout.cli.run_cmds import display_for, finish

    overrides = {"release": act.release, "root": str(root)}
    try:
        prepared = api.prepare(PLAN, "demo", overrides=overrides)
        display = display_for(prepared)
        outcome = api.run(
            prepared,
            sinks=[display],
            state_dir=state,
            lock_timeout=30.0,
            grace=5.0,
            on_interrupt=display.note,
            warn=terminal.error,
        )
    except RolloutError as exc:
        terminal.error(str(exc))
        return int(exit_status_for(exc)), None
    return finish(outcome), outcome.run.run_id


@app.command(epilog="Example:\n\n  rollout demo\n\n  rollout demo --keep   (leave the toy exchange running afterwards)")
def demo(
    keep: Annotated[bool, typer.Option("--keep", help="Leave the toy exchange running afterwards.")] = False,
    root: Annotated[Path, typer.Option("--root", help="Where the toy exchange keeps its files.")] = DEMO_ROOT,
    state_dir_opt: StateDirOption = None,
) -> None:
    """Replay the incident on a local toy exchange: refused, rolled back in seconds, then done right."""
    from rollout import api

    state = api.state_dir(state_dir_opt)
    try:
        fleet = _load_fleet_module()
        loaded = api.load(PLAN)
    except RolloutError as exc:
        fail(exc)
    root = root.resolve()
    fleet.stop_fleet(root)  # a fleet left over from an earlier demo
    hosts = loaded.plan.environments["demo"].hosts
    ports = [int((loaded.plan.environments["demo"].host(h).vars or {})["port"]) for h in hosts]  # type: ignore[arg-type]
    say = terminal.print
    say("rollout demo: replaying an exchange's metadata-upgrade incident on a local toy exchange")
    say(
        f"  the original: order placement, amendment and cancellation failed for {ORIGINAL_IMPACT_S // 60} min {ORIGINAL_IMPACT_S % 60} s"
    )
    say(
        f"  here: {len(ports)} order gateways on 127.0.0.1 ports {ports[0]}-{ports[-1]}, serving metadata v1; plan {PLAN.relative_to(REPO)}"
    )
    results: list[tuple[Act, int, str | None]] = []
    try:
        try:
            fleet.start_fleet(root, len(ports), base_port=ports[0])
        except Exception as exc:  # the example's own errors: busy ports, a gateway that would not start
            fail(UsageError(f"cannot start the toy exchange under {root}: {exc}"))
        for number, act in enumerate(ACTS, 1):
            say("")
            say(f"=== act {number}: {act.title} (release {act.release})")
            say(f"    {act.story}")
            results.append((act, *_play(act, root, state)))
    finally:
        if not keep:
            fleet.stop_fleet(root)
    say("")
    say("=== what happened")
    all_expected = True
    for number, (act, code, run_id) in enumerate(results, 1):
        expected = code == act.expected
        all_expected &= expected
        line = f"  act {number}: release {act.release:<18} exit {code} ({'as expected' if expected else f'EXPECTED {int(act.expected)}'})"
        if run_id is not None and act.expected == ExitStatus.ROLLED_BACK:
            window, detect = _impact(run_id, state)
            if window is not None:
                line += f"; customer impact {window:.2f} s vs {ORIGINAL_IMPACT_S} s in the original"
            if detect is not None:
                line += f" (guard tripped {detect:.2f} s after the first failed probe)"
        say(line)
    say(f"  runs are in {state}/runs: `rollout runs`, `rollout timeline last`, `rollout report RUN --format html`")
    say(f"  the status-page documents sent during the runs: {root / 'status.jsonl'}")
    if keep:
        say(f"  the toy exchange is still running: python {FLEET.relative_to(REPO)} stop --root {root}")
    say(f"  finished {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%S} UTC")
    # a story that did not go as told is rollout misbehaving, not a rollback
    raise typer.Exit(int(ExitStatus.SUCCESS if all_expected else ExitStatus.JOURNAL))
