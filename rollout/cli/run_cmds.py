"""`rollout run`, `rollout recover`, `rollout runs` and `rollout timeline`."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import stat
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from rollout.cli.app import (
    LockDirOption,
    StateDirOption,
    VarOption,
    app,
    fail,
    lock_dir,
    parse_vars,
    state_dir,
    terminal,
)
from rollout.errors import ExitStatus, JournalError, Refused, RolloutError, UsageError
from rollout.event import Event, Outcome
from rollout.journal import (
    Anchor,
    Journal,
    JournalReading,
    Record,
    final_run_end,
    head_path,
    parse_head,
    read_head_file,
    read_journal,
    verify_journal,
)
from rollout.lock import EnvironmentLock, LastRun, LockHolder
from rollout.runstore import RunDir, check_run_dir, create_run_dir, find_run, list_runs, new_run_id

if TYPE_CHECKING:
    from rollout.cli.display import LiveDisplay, PlainDisplay
    from rollout.engine.apply import Engine, RunResult
    from rollout.engine.events import Bus, Redactor
    from rollout.engine.prepare import Schedule
    from rollout.model import FreezeWindow
    from rollout.planfile import LoadedPlan
    from rollout.report.notify import Notifier

NOTIFY_FLUSH_TIMEOUT = 5.0
FALLBACK_FILE = "journal.fallback.jsonl"
FOLLOW_SETTLE = 1.0

# Commands are registered at start-up (`rollout --help` lists them), so this module
# imports only light modules at the top; the engine, pydantic models and rich.live are
# imported inside the commands that use them.


class JournalSink:
    """The journal as a sink: appends every event, durable when asked."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def emit(self, event: Event, *, sync: bool) -> None:
        """Append the event (raises JournalError on a write or fsync failure)."""
        self.journal.append(event, sync=sync)


class FallbackSink:
    """Where events go once the journal cannot be written: a side file and stderr, best effort.

    The rollback after a journal failure still deserves a record; this one is not
    hash-chained, so it is evidence of what was done, not proof.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.announced = False

    def emit(self, event: Event, *, sync: bool) -> None:
        """Append the event as a JSON line to the side file and say it on stderr."""
        from rollout.atomic import write_all
        from rollout.journal import event_to_dict

        line = json.dumps({"ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"), **event_to_dict(event)})
        if not self.announced:
            self.announced = True
            terminal.error(f"journal unavailable: recording the rest of the run in {self.path} and here")
        terminal.error(f"journal-fallback: {line}")
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                write_all(fd, line.encode() + b"\n")
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass  # stderr already has it; a full disk must not stop the rollback


def _duration_option(value: str, name: str) -> float:
    from rollout.units import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=name) from None


def freeze_window_now(windows: list[FreezeWindow], now: dt.datetime) -> FreezeWindow | None:
    """The freeze window that covers `now`, if any."""
    for window in windows:
        if window.days is None:
            try:
                start = dt.datetime.fromisoformat(window.start.replace("Z", "+00:00"))
                end = dt.datetime.fromisoformat(window.end.replace("Z", "+00:00"))
            except ValueError:
                continue
            start = start if start.tzinfo else start.replace(tzinfo=dt.UTC)
            end = end if end.tzinfo else end.replace(tzinfo=dt.UTC)
            if start <= now < end:
                return window
        else:
            day = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"][now.weekday()]
            hhmm = now.strftime("%H:%M")
            if day in window.days and window.start <= hhmm < window.end:
                return window
    return None


@contextmanager
def _signals(handler: Callable[[str], None]) -> Iterator[None]:
    """Route SIGINT and SIGTERM to the engine while a run is in progress."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def on_signal(signum: int, _frame: object) -> None:
        handler(signal.Signals(signum).name)

    for sig in previous:
        signal.signal(sig, on_signal)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _display(schedule: Schedule) -> LiveDisplay | PlainDisplay:
    from rollout.cli.display import LiveDisplay, PlainDisplay

    if terminal.out.is_terminal and os.environ.get("TERM") != "dumb":
        return LiveDisplay(terminal.out, schedule)
    return PlainDisplay(terminal.out)


def _print_result(result: RunResult, run: RunDir, schedule: Schedule, redactor: Redactor) -> None:
    def out(text: str) -> None:
        # summaries quote command output, which can hold a secret
        terminal.print(redactor.text(text))

    out("")
    cause = result.cause
    if result.outcome == Outcome.SUCCEEDED:
        out(
            f"SUCCEEDED: plan {schedule.plan_name} on {schedule.env_name}, {len(schedule.hosts)} hosts in {len(schedule.waves)} waves"
        )
        if result.failed_hosts:
            out(
                f"  {len(result.failed_hosts)} host(s) failed within the failure budget and were rolled back: {', '.join(result.failed_hosts)}"
            )
    elif result.outcome == Outcome.NOT_STARTED:
        out("NOTHING APPLIED: the run died before any step started; no host was changed")
        out("  its journal now ends, and `rollout verify` checks it")
    elif result.outcome == Outcome.REFUSED:
        out("REFUSED: a pre-check failed; nothing was changed on any host")
        for host, check, summary in result.failed_prechecks:
            out(f"  {host}: pre-check '{check}' failed: {summary}")
    else:
        label = {
            Outcome.ROLLED_BACK: "ROLLED BACK",
            Outcome.INTERRUPTED: "INTERRUPTED and rolled back",
            Outcome.ROLLBACK_FAILED: "ROLLBACK FAILED: manual action needed",
            Outcome.JOURNAL_FAILED: "STOPPED: the journal could not be written",
            Outcome.INTERNAL_ERROR: "INTERNAL ERROR in rollout; what it applied was rolled back",
        }.get(result.outcome, str(result.outcome).upper())
        out(f"{label}: {cause.summary if cause else 'aborted'}")
        if result.journal_error:
            out(f"  journal error: {result.journal_error}; no step started after it")
            fallback = run.path / FALLBACK_FILE
            if fallback.exists():
                out(f"  what happened after it is recorded (not hash-chained) in {fallback}")
        if result.rolled_back:
            out("  undone (newest first per host): " + ", ".join(f"{h}/{s}" for h, s in result.rolled_back))
        for failure in result.rollback_failures:
            out(f"  rollback FAILED on {failure.host}, step {failure.step}: {failure.summary}")
        if result.remaining:
            out("  still applied (undo by hand, newest first):")
            for host, steps in result.remaining.items():
                out(f"    {host}: {', '.join(steps)}")
        if result.irreversible_left:
            out(
                "  irreversible steps left applied: "
                + "; ".join(f"{h}: {', '.join(s)}" for h, s in result.irreversible_left.items())
            )
        if result.guards_green is False:
            out("  guards are still failing after the rollback: the service has not recovered")
        if result.outcome != Outcome.ROLLBACK_FAILED and not result.remaining and not result.irreversible_left:
            out("  targets are back where they started")
        if result.outcome == Outcome.INTERNAL_ERROR and cause is not None and cause.detail.get("traceback"):
            out("  please report this, with the traceback:")
            for line in str(cause.detail["traceback"]).splitlines():
                out(f"    {line}")
        if result.outcome == Outcome.JOURNAL_FAILED:
            out(f"  once the disk is fixed: `rollout verify {run.run_id}`, then `rollout recover {run.run_id}`")
    out(f"  run {run.run_id}: journal {run.journal}")
    if run.report.exists():
        out(f"  report {run.report}")


def _write_report(run: RunDir) -> None:
    """Write report.md at the end of every run (best effort: the journal is the evidence)."""
    try:
        from rollout.report.incident import write_markdown_report
    except ImportError:
        return
    try:
        write_markdown_report(run)
    except RolloutError as exc:
        terminal.error(f"warning: could not write the report: {exc}")


def execute(
    loaded: LoadedPlan,
    schedule: Schedule,
    *,
    state: Path,
    locks: Path,
    lock_timeout: float,
    grace: float,
    overrides: dict[str, str],
    sign_key: Path | None = None,
) -> int:
    """Lock, create the run directory and journal, run the engine, report; return the exit code."""
    lock = EnvironmentLock(locks, schedule.plan_name, schedule.env_name)
    lock.acquire(LockHolder.current(schedule.run_id), timeout=lock_timeout)
    try:
        _refuse_unsettled(lock)
        secret_names = sorted({n for h in schedule.hosts.values() for n in h.variables.secrets if n in overrides})
        run = create_run_dir(
            state,
            schedule.run_id,
            files=loaded.files,
            digest=loaded.digest,
            meta={
                "run_id": schedule.run_id,
                "plan_file": str(loaded.path.resolve()),
                "environment": schedule.env_name,
                # recover re-renders the plan with these; secret ones must be given again
                "vars": {k: ("***" if k in secret_names else v) for k, v in overrides.items()},
                "redacted_vars": secret_names,
                "plan_digest": loaded.digest,
            },
        )
        # recorded before the journal begins: a run that dies from here on blocks the next one until recovered
        lock.record_run(schedule.run_id, run.path)
        journal = Journal.create(run.journal, run_id=schedule.run_id, plan_digest=loaded.digest)
        code = _drive(
            schedule,
            journal,
            run,
            display=_display(schedule),
            grace=grace,
            action=lambda e: e.run(),
            sign_key=sign_key,
        )
        _clear_if_settled(lock, run.path, run.run_id)
        return code
    finally:
        lock.release()


def _unsettled(run_dir: Path) -> str | None:
    """Why the run in run_dir has not settled (died unrecovered, or rollback failed), or None if it has."""
    from rollout.runstore import JOURNAL

    if not run_dir.is_dir():
        return f"its run directory {run_dir} is missing"
    try:
        reading = read_journal(run_dir / JOURNAL)
    except JournalError as exc:
        return f"its journal cannot be read ({exc})"
    end = final_run_end(reading.records)
    if end is None:
        return "its journal has no final run.end: it died before it ended"
    if end.outcome == Outcome.ROLLBACK_FAILED:
        return "it ended rollback_failed: steps are still applied"
    return None


def _refuse_unsettled(lock: EnvironmentLock) -> None:
    """Refuse (exit 3) while the last run under this lock has not settled, from any directory."""
    last: LastRun | None = lock.last_run()
    if last is None:
        return
    why = _unsettled(last.run_dir)
    if why is None:
        return  # it settled but died before clearing its record; this run replaces the record
    hint = (
        f"; if that directory was removed on purpose, delete {lock.record_path} to go on"
        if not last.run_dir.is_dir()
        else ""
    )
    raise Refused(
        f"the previous run of plan {lock.plan!r} on {lock.env!r}, run {last.run_id} (directory {last.run_dir}), "
        f"has not settled: {why}. Nothing was changed. Settle it first: "
        f"rollout recover {last.run_id} --state-dir {last.run_dir.parent.parent}{hint}"
    )


def _clear_if_settled(lock: EnvironmentLock, run_dir: Path, run_id: str) -> None:
    """Drop the lock's record of this run once its journal says it settled."""
    if _unsettled(run_dir) is not None:
        return
    try:
        lock.clear_run(run_id)
    except JournalError as exc:
        terminal.error(f"warning: {exc}; the next run may ask for a recover it does not need")


def _drive(
    schedule: Schedule,
    journal: Journal,
    run: RunDir,
    *,
    display: LiveDisplay | PlainDisplay,
    grace: float,
    action: Callable[[Engine], RunResult],
    sign_key: Path | None = None,
) -> int:
    """Wire journal, display and notifier to an engine, run `action`, then report; the exit code."""
    from rollout.engine.apply import Engine, RunResult
    from rollout.engine.events import Bus, Redactor

    redactor = Redactor(schedule.secret_values)
    bus = Bus(JournalSink(journal), [display], redactor, fallback=FallbackSink(run.path / FALLBACK_FILE))
    notifier = _add_notifier(bus, schedule, run, journal)
    engine = Engine(schedule, bus, grace=grace)
    try:
        with _signals(lambda name: display.note(engine.interrupt(name))):
            try:
                result = action(engine)
            finally:
                engine.close()
    except JournalError as exc:
        result = RunResult(Outcome.JOURNAL_FAILED, journal_error=str(exc))
    finally:
        if notifier is not None:  # bounded: a hanging status page must not hold the run
            notifier.close(timeout=NOTIFY_FLUSH_TIMEOUT)
        display.close()
        journal.close()
    _write_report(run)
    _print_result(result, run, schedule, redactor)
    code = int(result.exit_status)
    signed = ""
    if sign_key is not None and journal.seq > 0:
        from rollout.signing import sign_head

        try:
            signed = f", signed in {sign_head(head_path(run.journal), sign_key)}"
        except RolloutError as exc:
            terminal.error(f"error: the journal head was not signed: {exc}")
            code = code or int(ExitStatus.JOURNAL)
    # the last line: an anchor for `rollout verify RUN --head SEQ:HASH` kept in a CI log
    terminal.print(f"  journal head {journal.seq}:{journal.head}{signed}")
    return code


def _add_notifier(bus: Bus, schedule: Schedule, run: RunDir, journal: Journal) -> Notifier | None:
    if not schedule.notify:
        return None
    try:
        from rollout.report.notify import Notifier
    except ImportError:
        return None
    notifier = Notifier(schedule, bus, head=lambda: (journal.seq, journal.head))
    bus.add(notifier)
    return notifier


@app.command(
    epilog="Examples:\n\n  rollout run plans/order-gateway-metadata.yaml --env demo\n\n"
    "  rollout run plan.yaml --env production --yes --lock-timeout 30s --grace 20s",
)
def run(
    plan: Annotated[Path, typer.Argument(help="The plan file.", show_default=False)],
    env: Annotated[str, typer.Option("--env", "-e", help="The environment to run on.", show_default=False)],
    var: VarOption = None,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes", "-y", help="Do not ask for confirmation (required off a terminal for non-rehearsal environments)."
        ),
    ] = False,
    lock_timeout: Annotated[
        str, typer.Option("--lock-timeout", help="Wait this long for the environment lock (default: fail at once).")
    ] = "0s",
    grace: Annotated[
        str, typer.Option("--grace", help="On abort, how long in-flight commands may finish before they are killed.")
    ] = "10s",
    sign_key: Annotated[
        Path | None,
        typer.Option(
            "--sign-key",
            envvar="ROLLOUT_SIGN_KEY",
            help="Sign the final journal head with this SSH private key (sshsig, checked by `ssh-keygen -Y verify`).",
            show_default=False,
        ),
    ] = None,
    state_dir_opt: StateDirOption = None,
    lock_dir_opt: LockDirOption = None,
) -> None:
    """Execute a plan: pre-checks, guards, waves; automatic rollback on any failure."""
    from rollout.engine.prepare import prepare_schedule
    from rollout.planfile import load_plan

    lock_wait = _duration_option(lock_timeout, "--lock-timeout")
    grace_s = _duration_option(grace, "--grace")
    overrides = parse_vars(var)
    if sign_key is not None:
        _check_sign_key(sign_key)
    try:
        loaded = load_plan(plan)
        schedule = prepare_schedule(loaded, env, overrides=overrides, run_id=new_run_id())
    except RolloutError as exc:
        fail(exc)
    window = freeze_window_now(loaded.plan.freeze, dt.datetime.now(dt.UTC))
    if window is not None:
        fail(
            Refused(
                f"{loaded.shown}: environment changes are frozen ({window.start} .. {window.end}): {window.reason or 'freeze window'}"
            )
        )
    rehearsal = loaded.plan.environments[env].rehearsal
    if not rehearsal and not yes:
        if not sys.stdin.isatty():
            fail(
                UsageError(f"refusing to change '{env}' (not a rehearsal environment) without confirmation: pass --yes")
            )
        answer = typer.prompt(
            f"Run '{loaded.plan.name}' on {env} ({len(schedule.hosts)} hosts)? Type the environment name to confirm"
        )
        if answer.strip() != env:
            fail(UsageError("not confirmed; nothing was changed"))
    try:
        code = execute(
            loaded,
            schedule,
            state=state_dir(state_dir_opt),
            locks=lock_dir(lock_dir_opt),
            lock_timeout=lock_wait,
            grace=grace_s,
            overrides=overrides,
            sign_key=sign_key,
        )
    except RolloutError as exc:
        fail(exc)
    raise typer.Exit(code)


def _check_sign_key(key: Path) -> None:
    """Refuse before any change when the head could not be signed at the end."""
    import shutil

    if shutil.which("ssh-keygen") is None:
        fail(UsageError("--sign-key needs OpenSSH's ssh-keygen on PATH (install openssh-client); nothing was changed"))
    if not key.is_file():
        fail(UsageError(f"--sign-key {key}: no such file; nothing was changed"))


@app.command(
    epilog="Examples:\n\n  rollout recover 20261123T223012Z-3f9a2c\n\n  rollout recover last --plan plans/order-gateway-metadata.yaml",
)
def recover(
    run_id: Annotated[
        str, typer.Argument(metavar="RUN", help="The run id (or a unique prefix, or 'last').", show_default=False)
    ],
    plan: Annotated[Path | None, typer.Option("--plan", help="The original plan file, if it moved or changed.")] = None,
    var: VarOption = None,
    lock_timeout: Annotated[
        str, typer.Option("--lock-timeout", help="Wait this long for the environment lock.")
    ] = "0s",
    state_dir_opt: StateDirOption = None,
    lock_dir_opt: LockDirOption = None,
) -> None:
    """Finish what a dead run left: settle in-doubt steps with verify, roll back everything applied.

    Also retries the rollbacks that remain after a run ended rollback_failed (exit 4), once
    their cause is fixed, and settles a run that died before it began as "not_started".
    """
    from rollout.cli.display import PlainDisplay
    from rollout.engine.prepare import prepare_schedule
    from rollout.engine.recover import recover_run
    from rollout.planfile import load_plan

    state = state_dir(state_dir_opt)
    lock_wait = _duration_option(lock_timeout, "--lock-timeout")
    try:
        rundir = find_run(state, run_id)
        check_run_dir(rundir)
        meta = rundir.meta()
        reading = _read_if_begun(rundir)
        digest = (reading.plan_digest if reading else None) or str(meta.get("plan_digest", ""))
        # A quick answer that needs no plan; the answer that counts is given under the lock.
        if reading is not None and _nothing_to_recover(rundir, reading):
            raise typer.Exit(0)
        plan_path = plan or Path(meta["plan_file"])
        loaded = load_plan(plan_path)
        if loaded.digest != digest:
            raise Refused(
                f"{plan_path}: the plan's digest {loaded.digest[:12]} does not match the run's {digest[:12]}: "
                "the plan changed since the run started; pass --plan with the original plan file"
            )
        overrides = {**(meta.get("vars") or {}), **parse_vars(var)}
        missing = [n for n in meta.get("redacted_vars", []) if overrides.get(n) == "***"]
        if missing:
            raise UsageError(
                f"run {rundir.run_id} was started with secret --var {', '.join(missing)}; its value is not stored: "
                f"pass it again (--var {missing[0]}=...)"
            )
        env_name = str(meta["environment"])
        schedule = prepare_schedule(loaded, env_name, overrides=overrides, run_id=rundir.run_id)
        lock = EnvironmentLock(lock_dir(lock_dir_opt), schedule.plan_name, env_name)
        lock.acquire(LockHolder.current(rundir.run_id), timeout=lock_wait)
        try:
            # Under the lock: a recover that ran while this one waited has already ended the run.
            reading = _read_if_begun(rundir)
            if reading is not None and _nothing_to_recover(rundir, reading):
                _clear_if_settled(lock, rundir.path, rundir.run_id)
                raise typer.Exit(0)
            if reading is None:
                journal = Journal.create(rundir.journal, run_id=rundir.run_id, plan_digest=digest)
            else:
                journal = Journal.reopen(rundir.journal, run_id=rundir.run_id, plan_digest=digest)
            if journal.recovered is not None and journal.recovered.torn is not None:
                terminal.error(
                    f"warning: the journal's last line was torn and was set aside in {rundir.journal}.broken"
                )
            events = [r.event for r in journal.recovered.records] if journal.recovered else []
            code = _drive(
                schedule,
                journal,
                rundir,
                display=PlainDisplay(terminal.out),
                grace=10.0,
                action=lambda engine: recover_run(engine, events, operator=engine.operator),
            )
            _clear_if_settled(lock, rundir.path, rundir.run_id)
        finally:
            lock.release()
    except RolloutError as exc:
        fail(exc)
    raise typer.Exit(code)


def _read_if_begun(rundir: RunDir) -> JournalReading | None:
    """The run's journal, or None when the run died before creating it."""
    if not os.path.lexists(rundir.journal):
        return None
    return read_journal(rundir.journal)


def _nothing_to_recover(rundir: RunDir, reading: JournalReading) -> bool:
    """True (and says so) when the journal's final run.end settled the run; rollback_failed has more to do."""
    end: Record | None = final_run_end(reading.records)
    if end is None or reading.torn is not None or end.outcome == Outcome.ROLLBACK_FAILED:
        return False
    terminal.print(f"run {rundir.run_id} already ended ({end.outcome}); nothing to recover")
    return True


def _run_summary(rundir: RunDir) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "run": rundir.run_id,
        "plan": None,
        "env": None,
        "start": None,
        "duration": None,
        "outcome": "unknown",
    }
    try:
        reading = read_journal(rundir.journal)
        # an edit the anchors can show (a rewritten or cut tail) must not be believed
        checked = verify_journal(rundir.journal, anchors=found_anchors(rundir, reading.records))
    except (RolloutError, OSError) as exc:
        entry["outcome"] = f"damaged ({exc})"
        return entry
    if not checked.ok:
        entry["outcome"] = f"damaged ({checked.reason})"
        return entry
    if not reading.records:
        return entry
    first, last = reading.records[0], reading.records[-1]
    entry.update(plan=first.data.get("plan"), env=first.data.get("environment"), start=first.ts)
    end = final_run_end(reading.records)
    # status deliveries may be journaled after run.end; they are not part of the run's duration
    entry["duration"] = round((end or last).mono - first.mono, 3)
    entry["outcome"] = end.outcome if end else "in progress or died (see `rollout recover`)"
    return entry


@app.command(epilog="Examples:\n\n  rollout runs\n\n  rollout runs --json")
def runs(
    as_json: Annotated[bool, typer.Option("--json", help="Print the history as JSON.")] = False,
    state_dir_opt: StateDirOption = None,
) -> None:
    """History of runs: id, plan, environment, start, duration, outcome."""
    from rollout.units import format_duration

    entries = [_run_summary(r) for r in list_runs(state_dir(state_dir_opt))]
    if as_json:
        terminal.print(json.dumps(entries, indent=2))
        return
    if not entries:
        terminal.print("no runs yet")
        return
    terminal.print(f"{'RUN':<26} {'PLAN':<28} {'ENV':<12} {'START (UTC)':<24} {'DURATION':>9}  OUTCOME")
    for e in entries:
        duration = format_duration(e["duration"]) if isinstance(e["duration"], int | float) else "-"
        terminal.print(
            f"{e['run']:<26} {e['plan']!s:<28} {e['env']!s:<12} {e['start']!s:<24} {duration:>9}  {e['outcome']}"
        )


def _timeline_line(record: Any) -> str:
    from rollout.report.timeline import describe_event

    ts = str(record.ts).replace("T", " ").replace("Z", "")
    return f"{ts}  {describe_event(record.event)}"


@app.command(epilog="Examples:\n\n  rollout timeline last\n\n  rollout timeline 20261123T223012Z --follow")
def timeline(
    run_id: Annotated[
        str, typer.Argument(metavar="RUN", help="The run id (or a unique prefix, or 'last').", show_default=False)
    ],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing events as the run goes on, until it ends.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per event.")] = False,
    state_dir_opt: StateDirOption = None,
) -> None:
    """The journal as a readable timeline in UTC with milliseconds."""
    try:
        rundir = find_run(state_dir(state_dir_opt), run_id)
        shown = 0
        quiet_since = time.monotonic()
        while True:
            reading = read_journal(rundir.journal)
            for record in reading.records[shown:]:
                terminal.print(json.dumps(record.to_dict()) if as_json else _timeline_line(record))
            if len(reading.records) > shown:
                quiet_since = time.monotonic()
            shown = len(reading.records)
            ended = final_run_end(reading.records) is not None
            # after run.end, status deliveries still land for up to the notifier's flush bound
            if not follow or (ended and time.monotonic() - quiet_since > FOLLOW_SETTLE):
                break
            time.sleep(0.2)
        if reading.torn is not None:
            terminal.error(
                f"warning: the last line of {rundir.journal} is torn (the writer died mid-line); it was not shown"
            )
    except RolloutError as exc:
        fail(exc)


@app.command(
    epilog="Examples:\n\n  rollout verify last\n\n  rollout verify 20261123T223012Z-3f9a2c --json\n\n"
    "  rollout verify 20261123T223012Z-3f9a2c --head 42:9f2c...e1 --allowed-signers ops.allowed_signers",
)
def verify(
    run_id: Annotated[
        str, typer.Argument(metavar="RUN", help="The run id (or a unique prefix, or 'last').", show_default=False)
    ],
    head: Annotated[
        str | None,
        typer.Option(
            "--head",
            metavar="SEQ:HASH",
            help="A head printed at the end of the run (CI log, status update): the journal must contain it.",
            show_default=False,
        ),
    ] = None,
    allowed_signers: Annotated[
        Path | None,
        typer.Option(
            "--allowed-signers",
            help="Check the signed head (head.sig) against this OpenSSH allowed-signers file.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the verification as JSON.")] = False,
    state_dir_opt: StateDirOption = None,
) -> None:
    """Check the journal's hash chain against every head kept outside it, and the plan digest (0 intact, 5 damaged)."""
    anchors: list[Anchor] = []
    if head is not None:
        try:
            anchors.append(parse_head(head, "--head"))
        except ValueError as exc:
            fail(UsageError(str(exc)))
    try:
        rundir = find_run(state_dir(state_dir_opt), run_id)
        recorded = (
            (rundir.path / "plan.sha256").read_text("utf-8").strip() if (rundir.path / "plan.sha256").exists() else None
        )
    except (RolloutError, OSError) as exc:
        fail(exc if isinstance(exc, RolloutError) else UsageError(str(exc)))
    signer: str | None = None
    try:
        if allowed_signers is not None:
            from rollout.signing import verify_head_signature

            signer = verify_head_signature(head_path(rundir.journal), allowed_signers)
        try:
            records = read_journal(rundir.journal).records
        except RolloutError:
            records = ()  # verify_journal below names the damage
        anchors.extend(found_anchors(rundir, records))
    except UsageError as exc:
        fail(exc)
    except RolloutError as exc:
        _print_damaged(rundir, str(exc), as_json)
    result = verify_journal(rundir.journal, plan_digest=recorded, anchors=tuple(anchors))
    plan_ok = _plan_copy_matches(rundir, recorded)
    ok = result.ok and plan_ok is not False
    if as_json:
        terminal.print(
            json.dumps(
                {
                    "run": rundir.run_id,
                    "ok": ok,
                    "records": result.records,
                    "head": result.head,
                    "complete": result.complete,
                    "first_bad_line": result.first_bad_line,
                    "reason": result.reason,
                    "plan_digest": result.plan_digest,
                    "plan_copy_matches": plan_ok,
                    "anchor": result.anchor,
                    "anchors_checked": list(result.anchors_checked),
                    "signed_by": signer,
                },
                indent=2,
            )
        )
    elif ok:
        terminal.print(f"intact: {result.records} events, head {result.head}")
        terminal.print(f"  plan digest {result.plan_digest}" + ("" if plan_ok is None else ", plan copy matches"))
        for source in result.anchors_checked:
            terminal.print(f"  agrees with the {source}")
        if signer is not None:
            terminal.print(f"  head signed by {signer} (an allowed signer)")
        if not result.complete:
            terminal.print("  note: the journal has no run.end: the run is in progress or died (see `rollout recover`)")
    else:
        where = f"line {result.first_bad_line}: " if result.first_bad_line else ""
        terminal.print(f"DAMAGED: {where}{result.reason or 'the stored plan no longer matches its digest'}")
    raise typer.Exit(int(ExitStatus.SUCCESS if ok else ExitStatus.JOURNAL))


def _print_damaged(rundir: RunDir, reason: str, as_json: bool) -> NoReturn:
    """An anchor or signature that cannot be trusted at all: damaged, exit 5."""
    if as_json:
        terminal.print(json.dumps({"run": rundir.run_id, "ok": False, "reason": reason}, indent=2))
    else:
        terminal.print(f"DAMAGED: {reason}")
    raise typer.Exit(int(ExitStatus.JOURNAL))


_REPORT_HEAD = re.compile(r"Journal head hash: `([0-9a-f]{64})` \((\d+) events\)")


def found_anchors(rundir: RunDir, records: tuple[Record, ...]) -> tuple[Anchor, ...]:
    """Every journal head recorded outside the journal: head file, report.md, file notifications."""
    anchors: list[Anchor] = []
    head = read_head_file(rundir.journal)
    if head is not None:
        anchors.append(head)
    try:
        report_text = rundir.report.read_text("utf-8")
    except OSError:
        report_text = ""
    match = _REPORT_HEAD.search(report_text)
    if match:
        anchors.append(Anchor(f"report {rundir.report}", int(match.group(2)), match.group(1)))
    anchors.extend(_notification_anchors(rundir, records))
    return tuple(anchors)


def _notification_anchors(rundir: RunDir, records: tuple[Record, ...]) -> list[Anchor]:
    """The newest head in each file the run's status documents were delivered to."""
    files = {
        str(r.data["sink"])[len("file ") :]
        for r in records
        if r.kind == "notify.delivery" and str(r.data.get("sink", "")).startswith("file ")
    }
    anchors = []
    for name in sorted(files):
        lines = _read_status_file(Path(name))
        newest: Anchor | None = None
        for line in lines:
            try:
                doc = json.loads(line)
                if doc.get("run_id") != rundir.run_id or "journal_head" not in doc:
                    continue
                anchor = parse_head(str(doc["journal_head"]), f"status notification in {name}")
            except (ValueError, AttributeError):
                continue
            if newest is None or anchor.seq > newest.seq:
                newest = anchor
        if newest is not None:
            anchors.append(newest)
    return anchors


STATUS_FILE_CAP = 16 * 1024 * 1024


def _read_status_file(path: Path) -> list[str]:
    """The lines of a status file named in the journal: only a regular file, only so much of it.

    The name comes from a journal that may have been tampered with: a FIFO, a device or a
    huge file there must not hang or exhaust `verify`.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(STATUS_FILE_CAP)
    except OSError:
        return []
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace").splitlines()


def _plan_copy_matches(rundir: RunDir, recorded: str | None) -> bool | None:
    """Re-load the stored plan copy and compare its digest (None when there is no copy)."""
    from rollout.planfile import load_plan

    copy = rundir.path / "plan"
    if recorded is None or not copy.is_dir():
        return None
    try:
        meta = rundir.meta()
        main = Path(str(meta.get("plan_file", "")))
        candidates = sorted(copy.rglob(main.name)) if main.name else []
        if not candidates:
            return None
        return load_plan(candidates[0]).digest == recorded
    except RolloutError:
        return False


@app.command(
    epilog="Example:\n\n  rollout unlock production --plan order-gateway-metadata --lock-id 3f9a2c1d0b7e6a54\n\n"
    "The lock id is printed when a run is refused because the lock is held.",
)
def unlock(
    env: Annotated[str, typer.Argument(metavar="ENV", help="The environment whose lock to force.", show_default=False)],
    plan_name: Annotated[
        str,
        typer.Option(
            "--plan", help="The plan's name (its `name:`, as in the refusal message), not its file.", show_default=False
        ),
    ],
    lock_id: Annotated[
        str, typer.Option("--lock-id", help="The holder's lock id (from the refusal message).", show_default=False)
    ],
    lock_dir_opt: LockDirOption = None,
) -> None:
    """Force the lock of a plan on an environment whose holder is stuck: only with the holder's lock id."""
    from rollout.lock import force_unlock

    try:
        holder = force_unlock(lock_dir(lock_dir_opt), plan_name, env, lock_id)
    except (RolloutError, ValueError) as exc:
        fail(exc if isinstance(exc, RolloutError) else UsageError(str(exc)))
    terminal.print(f"forced the lock of plan {plan_name!r} on {env!r}, held by {holder.describe()}")
    terminal.print(
        f"  if pid {holder.pid} on {holder.host} is still running it may still change targets: stop it, "
        f"then `rollout recover {holder.run_id}` to roll back what it left (new runs refuse until then)"
    )
