"""`rollout run` and `rollout recover`: confirmation, the live display, and the summary of how it ended.

Everything else (lock, run directory, journal, engine, signals, report, signing) is
`rollout.api`'s; commands are registered at start-up, so the API is imported inside them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from rollout.cli.app import LockDirOption, StateDirOption, VarOption, app, fail, parse_vars, terminal
from rollout.errors import RolloutError, UsageError
from rollout.event import Outcome

if TYPE_CHECKING:
    from rollout.api import Prepared, RunOutcome
    from rollout.cli.display import LiveDisplay, PlainDisplay

_FAILED_LABEL = {
    Outcome.ROLLED_BACK: "ROLLED BACK",
    Outcome.INTERRUPTED: "INTERRUPTED and rolled back",
    Outcome.ROLLBACK_FAILED: "ROLLBACK FAILED: manual action needed",
    Outcome.JOURNAL_FAILED: "STOPPED: the journal could not be written",
    Outcome.INTERNAL_ERROR: "INTERNAL ERROR in rollout; what it applied was rolled back",
}


def duration_option(value: str, name: str) -> float:
    """A duration option ("30s", "2m") in seconds; a bad one is a usage error naming the option."""
    from rollout.units import parse_duration

    try:
        return parse_duration(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=name) from None


def display_for(prepared: Prepared) -> LiveDisplay | PlainDisplay:
    """The live view on a terminal, one plain line per event elsewhere (CI logs, pipes)."""
    from rollout.cli.display import LiveDisplay, PlainDisplay

    if terminal.out.is_terminal and os.environ.get("TERM") != "dumb":
        return LiveDisplay(terminal.out, prepared.schedule)
    return PlainDisplay(terminal.out)


class _Summary:
    """The operator's summary of a finished run, secrets redacted (it quotes command output)."""

    def __init__(self, outcome: RunOutcome, *, to_stderr: bool = False) -> None:
        self.outcome = outcome
        self.result = outcome.result
        self._print = terminal.error if to_stderr else terminal.print

    def out(self, text: str) -> None:
        """One line on stdout (stderr when stdout carries the JSON document), redacted."""
        self._print(self.outcome.redactor.text(text))

    def print(self) -> None:
        """The whole summary, then where the evidence is."""
        self.out("")
        if self.result.outcome == Outcome.SUCCEEDED:
            self._succeeded()
        elif self.result.outcome == Outcome.NOT_STARTED:
            self.out("NOTHING APPLIED: the run died before any step started; no host was changed")
            self.out("  its journal now ends, and `rollout verify` checks it")
        elif self.result.outcome == Outcome.REFUSED:
            self.out("REFUSED: a pre-check failed; nothing was changed on any host")
            for host, check, summary in self.result.failed_prechecks:
                self.out(f"  {host}: pre-check '{check}' failed: {summary}")
        else:
            self._stopped()
        run = self.outcome.run
        self.out(f"  run {run.run_id}: journal {run.journal}")
        if run.report.exists():
            self.out(f"  report {run.report}")

    def _succeeded(self) -> None:
        schedule, result = self.outcome.schedule, self.result
        self.out(
            f"SUCCEEDED: plan {schedule.plan_name} on {schedule.env_name}, {len(schedule.hosts)} hosts in {len(schedule.waves)} waves"
        )
        if result.failed_hosts:
            self.out(
                f"  {len(result.failed_hosts)} host(s) failed within the failure budget and were rolled back: {', '.join(result.failed_hosts)}"
            )

    def _stopped(self) -> None:
        result, cause = self.result, self.result.cause
        label = _FAILED_LABEL.get(result.outcome, str(result.outcome).upper())
        self.out(f"{label}: {cause.summary if cause else 'aborted'}")
        if result.journal_error:
            self.out(f"  journal error: {result.journal_error}; no step started after it")
            fallback = self.outcome.fallback
            if fallback is not None:
                self.out(f"  what happened after it is recorded (not hash-chained) in {fallback}")
        self._undone_and_left()
        if result.guards_green is False:
            self.out("  guards are still failing after the rollback: the service has not recovered")
        if result.outcome != Outcome.ROLLBACK_FAILED and not result.remaining and not result.irreversible_left:
            self.out("  targets are back where they started")
        if result.outcome == Outcome.INTERNAL_ERROR and cause is not None and cause.detail.get("traceback"):
            self.out("  please report this, with the traceback:")
            for line in str(cause.detail["traceback"]).splitlines():
                self.out(f"    {line}")
        if result.outcome == Outcome.JOURNAL_FAILED:
            run_id = self.outcome.run.run_id
            self.out(f"  once the disk is fixed: `rollout verify {run_id}`, then `rollout recover {run_id}`")

    def _undone_and_left(self) -> None:
        result = self.result
        if result.rolled_back:
            self.out("  undone (newest first per host): " + ", ".join(f"{h}/{s}" for h, s in result.rolled_back))
        for failure in result.rollback_failures:
            self.out(f"  rollback FAILED on {failure.host}, step {failure.step}: {failure.summary}")
        if result.remaining:
            self.out("  still applied (undo by hand, newest first):")
            for host, steps in result.remaining.items():
                self.out(f"    {host}: {', '.join(steps)}")
        if result.irreversible_left:
            self.out(
                "  irreversible steps left applied: "
                + "; ".join(f"{h}: {', '.join(s)}" for h, s in result.irreversible_left.items())
            )


def finish(outcome: RunOutcome, *, to_stderr: bool = False) -> int:
    """Print the summary and the journal head (the last line, an anchor for a CI log); the exit code."""
    _Summary(outcome, to_stderr=to_stderr).print()
    signed = ""
    if outcome.sign_error is not None:
        terminal.error(f"error: the journal head was not signed: {outcome.sign_error}")
    elif outcome.signed is not None:
        signed = f", signed in {outcome.signed}"
    seq, head = outcome.head
    # the last line: an anchor for `rollout verify RUN --head SEQ:HASH` kept in a CI log
    (terminal.error if to_stderr else terminal.print)(f"  journal head {seq}:{head}{signed}")
    return int(outcome.exit_status)


class _CiOutput:
    """`run --json` and `--junit FILE`: what CI reads; with --json stdout carries one JSON document only."""

    def __init__(self, json_out: bool, junit: Path | None) -> None:
        self.json = json_out
        self.junit = junit

    def refuse(self, exc: RolloutError, prepared: Prepared | None = None) -> NoReturn:
        """A run that never began: the error on stderr, and in the JSON document when asked."""
        if not self.json:
            fail(exc)
        from rollout import api
        from rollout.exits import exit_status_for

        status = int(exit_status_for(exc))
        terminal.error(str(exc))
        self._document(api.refusal_document(exc, status, prepared=prepared))
        raise typer.Exit(status)

    def finish(self, outcome: RunOutcome) -> int:
        """The human summary, then the JUnit file and the JSON document; the exit code."""
        code = finish(outcome, to_stderr=self.json)
        if self.junit is not None:
            try:
                _write_run_junit(self.junit, outcome)
            except RolloutError as exc:
                terminal.error(f"error: {exc}")
        if self.json:
            from rollout import api

            self._document(api.run_document(outcome))
        return code

    @staticmethod
    def _document(doc: dict[str, object]) -> None:
        import json

        # stdout itself, never the rich console: the document must not be wrapped or styled
        sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        sys.stdout.flush()


def _write_run_junit(path: Path, outcome: RunOutcome) -> None:
    """One testcase per host x step (failure: the step's summary), plus one per guard trip."""
    from rollout import api
    from rollout.cli.junit import Case, write_junit

    steps, trips = api.run_cases(outcome)
    redact = outcome.redactor.text
    cases = [
        Case(
            name=f"{s.host} / {s.step}",
            classname=f"{outcome.schedule.plan_name}.{outcome.schedule.env_name}",
            failure=redact(s.failure) if s.failure is not None else None,
            skipped="not started on this host" if s.state == "not_started" and s.failure is None else None,
            output=f"state: {s.state}",
            time=s.seconds,
        )
        for s in steps
    ]
    cases += [
        Case(
            name=f"guard '{t.guard}' on {t.host}",
            classname=f"{outcome.schedule.plan_name}.{outcome.schedule.env_name}.guards",
            failure=redact(f"guard '{t.guard}' tripped on {t.host}: {t.summary}"),
        )
        for t in trips
    ]
    write_junit(path, f"rollout run {outcome.run.run_id}", cases)


def _confirm(prepared: Prepared, env: str, yes: bool, refuse: Callable[[RolloutError], NoReturn] = fail) -> None:
    """A non-rehearsal environment is changed only when the operator said so (--yes, or typing its name)."""
    if prepared.rehearsal or yes:
        return
    if not sys.stdin.isatty():
        refuse(UsageError(f"refusing to change '{env}' (not a rehearsal environment) without confirmation: pass --yes"))
    answer = typer.prompt(
        f"Run '{prepared.loaded.plan.name}' on {env} ({len(prepared.schedule.hosts)} hosts)? Type the environment name to confirm"
    )
    if answer.strip() != env:
        fail(UsageError("not confirmed; nothing was changed"))


@app.command(
    epilog="Examples:\n\n  rollout run plans/order-gateway-metadata.yaml --env demo\n\n"
    "  rollout run plan.yaml --env production --yes --lock-timeout 30s --grace 20s\n\n"
    "  rollout run plan.lock --yes   (written by `rollout plan --env production --out plan.lock`)",
)
def run(
    plan: Annotated[
        Path, typer.Argument(help="The plan file, or a lock file from `rollout plan --out`.", show_default=False)
    ],
    env: Annotated[
        str | None,
        typer.Option("--env", "-e", help="The environment to run on (a lock file names it).", show_default=False),
    ] = None,
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
    expect_digest: Annotated[
        str | None,
        typer.Option(
            "--expect-digest",
            help="Run only if the plan still renders to this pin (`rollout plan` prints it); else refuse, exit 3.",
            show_default=False,
        ),
    ] = None,
    rehearse_rollback: Annotated[
        bool,
        typer.Option(
            "--rehearse-rollback",
            help="Rehearsal environments only: apply, roll everything back (guards must be green), apply again.",
        ),
    ] = False,
    json_out: Annotated[
        bool,
        typer.Option("--json", help="One JSON document on stdout at the end (no live display; text goes to stderr)."),
    ] = False,
    junit: Annotated[
        Path | None,
        typer.Option("--junit", help="Write a JUnit XML report: a testcase per host x step, and per guard trip."),
    ] = None,
) -> None:
    """Execute a plan: pre-checks, guards, waves; automatic rollback on any failure."""
    from rollout import api
    from rollout.api.pin import prepare_pinned

    ci = _CiOutput(json_out, junit)
    lock_wait = duration_option(lock_timeout, "--lock-timeout")
    grace_s = duration_option(grace, "--grace")
    overrides = parse_vars(var)
    prepared: Prepared | None = None
    try:
        if sign_key is not None:
            api.check_sign_key(sign_key)
        prepared = prepare_pinned(plan, env, overrides=overrides, expect_pin=expect_digest)
        if rehearse_rollback:
            api.check_rehearsal(prepared)
        api.freeze_check(prepared)
    except RolloutError as exc:
        ci.refuse(exc, prepared)
    _confirm(prepared, prepared.schedule.env_name, yes, lambda exc: ci.refuse(exc, prepared))
    display = _display(prepared, json_out)
    try:
        outcome = api.run(
            prepared,
            sinks=[display],
            state_dir=state_dir_opt,
            lock_dir=lock_dir_opt,
            lock_timeout=lock_wait,
            grace=grace_s,
            sign_key=sign_key,
            on_interrupt=display.note,
            warn=terminal.error,
            rehearse_rollback=rehearse_rollback,
        )
    except RolloutError as exc:
        display.close()
        ci.refuse(exc, prepared)
    raise typer.Exit(ci.finish(outcome))


def _display(prepared: Prepared, json_out: bool) -> LiveDisplay | PlainDisplay:
    """With --json, stdout is the document's: progress goes to stderr as plain lines."""
    if json_out:
        from rollout.cli.display import PlainDisplay

        return PlainDisplay(terminal.err)
    return display_for(prepared)


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
    from rollout import api
    from rollout.cli.display import PlainDisplay

    lock_wait = duration_option(lock_timeout, "--lock-timeout")
    display = PlainDisplay(terminal.out)
    try:
        outcome = api.recover(
            run_id,
            plan=plan,
            overrides=parse_vars(var),
            sinks=[display],
            state_dir=state_dir_opt,
            lock_dir=lock_dir_opt,
            lock_timeout=lock_wait,
            on_interrupt=display.note,
            warn=terminal.error,
        )
    except RolloutError as exc:
        fail(exc)
    if isinstance(outcome, api.AlreadySettled):
        terminal.print(f"run {outcome.run.run_id} already ended ({outcome.outcome}); nothing to recover")
        raise typer.Exit(int(outcome.exit_status))
    raise typer.Exit(finish(outcome))
