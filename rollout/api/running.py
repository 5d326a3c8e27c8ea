"""Running a plan and recovering a dead run, from Python: the wiring the CLI used to own.

A run is: refuse inside a freeze window; take the environment lock; refuse while the
last run under it has not settled; create the run directory and its journal; wire the
journal, its fallback, the caller's sinks and the notifier to one bus; run the engine
with SIGINT/SIGTERM routed to it; write the report; sign the head if asked. The caller
gets a `RunOutcome` back; nothing here prints, and errors are our documented ones
(`rollout.errors`), never SystemExit.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rollout.api import dirs
from rollout.api.settle import clear_if_settled, refuse_unsettled
from rollout.api.sinks import FALLBACK_FILE, CallbackSink, FallbackSink, JournalSink, Warn
from rollout.errors import ExitStatus, JournalError, Refused, RolloutError, UsageError
from rollout.event import Event, Outcome
from rollout.exits import exit_status_for
from rollout.journal import Journal, head_path
from rollout.lock import EnvironmentLock, LockHolder
from rollout.runstore import RunDir, create_run_dir, new_run_id

if TYPE_CHECKING:
    from rollout.engine.apply import Engine
    from rollout.engine.events import Bus, Redactor, Sink
    from rollout.engine.outcomes import RunResult
    from rollout.engine.prepare import Schedule
    from rollout.planfile import LoadedPlan
    from rollout.report.notify import Notifier

NOTIFY_FLUSH_TIMEOUT = 5.0
DEFAULT_GRACE = 10.0

log = logging.getLogger("rollout")


def _log_warning(text: str) -> None:
    log.warning("%s", text)


@dataclass(frozen=True)
class Prepared:
    """A loaded plan scheduled for one environment: what a run will execute, host by host."""

    loaded: LoadedPlan
    schedule: Schedule
    overrides: Mapping[str, str]

    @property
    def rehearsal(self) -> bool:
        """Whether the environment is marked as a rehearsal (no confirmation needed)."""
        return self.loaded.plan.environments[self.schedule.env_name].rehearsal


def prepare(
    plan: Path | str,
    env: str,
    *,
    overrides: Mapping[str, str] | None = None,
    run_id: str | None = None,
) -> Prepared:
    """Load and validate the plan, then schedule it for `env` (PlanError, UsageError on bad input)."""
    from rollout.engine.prepare import prepare_schedule
    from rollout.planfile import load_plan

    values = dict(overrides or {})
    loaded = load_plan(Path(plan))
    schedule = prepare_schedule(loaded, env, overrides=values, run_id=run_id or new_run_id())
    return Prepared(loaded, schedule, values)


@dataclass(frozen=True)
class RunOutcome:
    """How a run (or a recover) ended, and where its evidence is."""

    result: RunResult
    run: RunDir
    schedule: Schedule
    head: tuple[int, str]
    redactor: Redactor
    signed: Path | None = None
    sign_error: str | None = None

    @property
    def outcome(self) -> str:
        """The run's outcome (`rollout.event.Outcome`)."""
        return self.result.outcome

    @property
    def exit_status(self) -> ExitStatus:
        """The exit code the command would end with (a head that could not be signed makes a success 5)."""
        status = exit_status_for(self.result.outcome)
        if self.sign_error is not None and status == ExitStatus.SUCCESS:
            return ExitStatus.JOURNAL
        return status

    @property
    def fallback(self) -> Path | None:
        """The side file of events recorded after the journal failed, if there is one."""
        path = self.run.path / FALLBACK_FILE
        return path if path.exists() else None


@dataclass(frozen=True)
class AlreadySettled:
    """`recover` found that the run's journal already ends it: nothing was done."""

    run: RunDir
    outcome: str

    @property
    def exit_status(self) -> ExitStatus:
        """Nothing to recover is a success."""
        return ExitStatus.SUCCESS


@dataclass(frozen=True)
class Wiring:
    """What the caller hands every run: its sinks, its warning channel, its signal wishes."""

    sinks: tuple[Sink, ...]
    warn: Warn
    signals: bool
    on_interrupt: Callable[[str], None]
    grace: float


def _wiring(
    on_event: Callable[[Event], None] | None,
    sinks: Sequence[Sink],
    warn: Warn | None,
    signals: bool,
    on_interrupt: Callable[[str], None] | None,
    grace: float,
) -> Wiring:
    warn = warn or _log_warning
    every = tuple(sinks) + ((CallbackSink(on_event),) if on_event is not None else ())
    return Wiring(every, warn, signals, on_interrupt or warn, grace)


def freeze_check(prepared: Prepared, now: dt.datetime | None = None) -> None:
    """Refuse (exit 3) inside one of the plan's freeze windows."""
    from rollout.engine.freeze import freeze_window_now

    window = freeze_window_now(prepared.loaded.plan.freeze, now or dt.datetime.now(dt.UTC))
    if window is not None:
        raise Refused(
            f"{prepared.loaded.shown}: environment changes are frozen ({window.start} .. {window.end}): "
            f"{window.reason or 'freeze window'}"
        )


def check_rehearsal(prepared: Prepared) -> None:
    """Refuse (usage, exit 2) a rollback rehearsal off a rehearsal environment, or of a way back that cannot be run."""
    env = prepared.schedule.env_name
    if not prepared.rehearsal:
        raise UsageError(
            f"--rehearse-rollback: environment '{env}' is not a rehearsal environment "
            f"(mark it `rehearsal: true` in {prepared.loaded.shown}); nothing was changed"
        )
    irreversible = [s.name for s in prepared.loaded.plan.steps if s.irreversible]
    if irreversible:
        raise UsageError(
            f"--rehearse-rollback: step(s) {', '.join(irreversible)} have `rollback: none`: their way back "
            "cannot be rehearsed, and reapplying them unrolled would run them twice; nothing was changed"
        )


def check_sign_key(key: Path) -> None:
    """Refuse before any change when the head could not be signed at the end."""
    if shutil.which("ssh-keygen") is None:
        raise UsageError("--sign-key needs OpenSSH's ssh-keygen on PATH (install openssh-client); nothing was changed")
    if not key.is_file():
        raise UsageError(f"--sign-key {key}: no such file; nothing was changed")


def run(
    plan: Prepared | Path | str,
    env: str | None = None,
    *,
    overrides: Mapping[str, str] | None = None,
    on_event: Callable[[Event], None] | None = None,
    sinks: Sequence[Sink] = (),
    state_dir: Path | str | None = None,
    lock_dir: Path | str | None = None,
    lock_timeout: float = 0.0,
    grace: float = DEFAULT_GRACE,
    sign_key: Path | None = None,
    signals: bool = True,
    on_interrupt: Callable[[str], None] | None = None,
    warn: Warn | None = None,
    rehearse_rollback: bool = False,
) -> RunOutcome:
    """Execute a plan on an environment: pre-checks, guards, waves, automatic rollback on any failure.

    `rehearse_rollback` (rehearsal environments only, else UsageError) follows the waves
    with a rollback of everything, guards green, then the waves again: both ways proven.

    `plan` is a plan file (then `env` is required) or the result of `prepare`. Every event,
    secrets redacted, goes to `on_event` and to each of `sinks` (a sink with a `close()` is
    closed when the run ends); keep them quick, the run waits for them. SIGINT and SIGTERM
    abort the run (and roll back) when `signals` is true and this is the main thread.
    Warnings go to `warn` (default: the "rollout" logger). Raises Refused, LockHeld,
    PlanError or UsageError before any change; once the run began, how it ended is the
    returned outcome, never an exception.
    """
    plan = _prepared(plan, env, overrides)
    if rehearse_rollback:
        check_rehearsal(plan)
    if sign_key is not None:
        check_sign_key(sign_key)
    freeze_check(plan)
    wiring = _wiring(on_event, sinks, warn, signals, on_interrupt, grace)
    schedule = plan.schedule
    lock = EnvironmentLock(dirs.lock_dir(lock_dir), schedule.plan_name, schedule.env_name)
    lock.acquire(LockHolder.current(schedule.run_id), timeout=lock_timeout)
    try:
        refuse_unsettled(lock)
        rundir = _create_run_dir(plan, dirs.state_dir(state_dir))
        # recorded before the journal begins: a run that dies from here on blocks the next one until recovered
        lock.record_run(schedule.run_id, rundir.path)
        journal = Journal.create(rundir.journal, run_id=schedule.run_id, plan_digest=plan.loaded.digest)
        outcome = drive(
            schedule,
            journal,
            rundir,
            wiring,
            action=lambda e: e.run(rehearse_rollback=rehearse_rollback),
            sign_key=sign_key,
        )
        clear_if_settled(lock, rundir.path, rundir.run_id, wiring.warn)
        return outcome
    finally:
        lock.release()


def _prepared(plan: Prepared | Path | str, env: str | None, overrides: Mapping[str, str] | None) -> Prepared:
    """The plan as prepared for its environment; a prepared plan is not silently re-targeted."""
    if not isinstance(plan, Prepared):
        if env is None:
            raise UsageError("run: name the environment to run on")
        return prepare(plan, env, overrides=overrides)
    if env is not None and env != plan.schedule.env_name:
        raise UsageError(f"run: the plan was prepared for {plan.schedule.env_name!r}, not {env!r}")
    if overrides is not None:
        raise UsageError("run: a prepared plan already has its variables; pass overrides to prepare()")
    return plan


def _create_run_dir(plan: Prepared, state: Path) -> RunDir:
    """The run directory with the plan's files, its digest and what recover needs to re-render it."""
    schedule, overrides = plan.schedule, plan.overrides
    secret_names = sorted({n for h in schedule.hosts.values() for n in h.variables.secrets if n in overrides})
    return create_run_dir(
        state,
        schedule.run_id,
        files=plan.loaded.files,
        digest=plan.loaded.digest,
        meta={
            "run_id": schedule.run_id,
            "plan_file": str(plan.loaded.path.resolve()),
            "environment": schedule.env_name,
            # recover re-renders the plan with these; secret ones must be given again
            "vars": {k: ("***" if k in secret_names else v) for k, v in overrides.items()},
            "redacted_vars": secret_names,
            "plan_digest": plan.loaded.digest,
        },
    )


@contextmanager
def _routed_signals(enabled: bool, handler: Callable[[str], None]) -> Iterator[None]:
    """Route SIGINT and SIGTERM to the engine while a run is in progress (main thread only)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
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


def drive(
    schedule: Schedule,
    journal: Journal,
    rundir: RunDir,
    wiring: Wiring,
    *,
    action: Callable[[Engine], RunResult],
    sign_key: Path | None = None,
) -> RunOutcome:
    """Wire journal, sinks and notifier to an engine, run `action`, write the report, sign the head."""
    from rollout.engine.apply import Engine
    from rollout.engine.events import Bus, Redactor
    from rollout.engine.outcomes import RunResult

    redactor = Redactor(schedule.secret_values)
    fallback = FallbackSink(rundir.path / FALLBACK_FILE, wiring.warn)
    bus = Bus(JournalSink(journal), wiring.sinks, redactor, fallback=fallback)
    notifier = _add_notifier(bus, schedule, journal)
    engine = Engine(schedule, bus, grace=wiring.grace)
    try:
        with _routed_signals(wiring.signals, lambda name: wiring.on_interrupt(engine.interrupt(name))):
            try:
                result = action(engine)
            finally:
                engine.close()
    except JournalError as exc:
        result = RunResult(Outcome.JOURNAL_FAILED, journal_error=str(exc))
    finally:
        if notifier is not None:  # bounded: a hanging status page must not hold the run
            notifier.close(timeout=NOTIFY_FLUSH_TIMEOUT)
        _close_sinks(wiring.sinks)
        journal.close()
    _write_report(rundir, wiring.warn)
    if schedule.loaded.plan.environments[schedule.env_name].rehearsal:
        _write_rehearsal_record(rundir, wiring.warn)
    signed, sign_error = _sign(rundir, journal, sign_key)
    return RunOutcome(result, rundir, schedule, (journal.seq, journal.head), redactor, signed, sign_error)


def _close_sinks(sinks: Sequence[Sink]) -> None:
    """Close the caller's sinks that can be closed (a live display), even if one of them fails."""
    for sink in sinks:
        close = getattr(sink, "close", None)
        if callable(close):
            try:
                close()
            except Exception as exc:  # a display bug must not hide how the run ended
                log.warning("closing %s failed: %r", type(sink).__name__, exc)


def _add_notifier(bus: Bus, schedule: Schedule, journal: Journal) -> Notifier | None:
    """Status notifications for the run, when the plan asks for them."""
    if not schedule.notify:
        return None
    from rollout.report.notify import Notifier

    notifier = Notifier(schedule, bus, head=lambda: (journal.seq, journal.head))
    bus.add(notifier)
    return notifier


def _write_report(rundir: RunDir, warn: Warn) -> None:
    """Write report.md at the end of every run (best effort: the journal is the evidence)."""
    from rollout.report.incident import write_markdown_report

    try:
        write_markdown_report(rundir)
    except RolloutError as exc:
        warn(f"warning: could not write the report: {exc}")


def _write_rehearsal_record(rundir: RunDir, warn: Warn) -> None:
    """Write rehearsal.json at the end of every run on a rehearsal environment (its journal is the evidence)."""
    from rollout.report.rehearsal import write_rehearsal_record

    try:
        write_rehearsal_record(rundir.path)
    except RolloutError as exc:
        warn(f"warning: could not write the rehearsal record: {exc}")


def _sign(rundir: RunDir, journal: Journal, key: Path | None) -> tuple[Path | None, str | None]:
    """Sign the final head with an SSH key: (the signature file, or why it was not signed)."""
    if key is None or journal.seq == 0:
        return None, None
    from rollout.signing import sign_head

    try:
        return sign_head(head_path(rundir.journal), key), None
    except RolloutError as exc:
        return None, str(exc)


def recover(
    run_id: str,
    *,
    plan: Path | str | None = None,
    overrides: Mapping[str, str] | None = None,
    on_event: Callable[[Event], None] | None = None,
    sinks: Sequence[Sink] = (),
    state_dir: Path | str | None = None,
    lock_dir: Path | str | None = None,
    lock_timeout: float = 0.0,
    grace: float = DEFAULT_GRACE,
    signals: bool = True,
    on_interrupt: Callable[[str], None] | None = None,
    warn: Warn | None = None,
) -> RunOutcome | AlreadySettled:
    """Finish what a dead run left: end its processes, settle in-doubt steps, roll back what is applied.

    Also retries the rollbacks left after a run ended rollback_failed, and settles a run
    that died before it began as "not_started". `run_id` may be a unique prefix or "last".
    `plan` is the original plan file if it moved; `overrides` must repeat secret variables.
    """
    from rollout.api.recovering import recover_run_dir

    wiring = _wiring(on_event, sinks, warn, signals, on_interrupt, grace)
    return recover_run_dir(
        run_id,
        plan=Path(plan) if plan is not None else None,
        overrides=dict(overrides or {}),
        state=dirs.state_dir(state_dir),
        locks=dirs.lock_dir(lock_dir),
        lock_timeout=lock_timeout,
        wiring=wiring,
    )
