"""One step on one host: its attempts (with retries), the judgement of its result, its verify.

What this part of the engine upholds (see apply.py for the whole list):

- a step's intent is journaled before its command starts, and only while the run is not
  aborting (`_emit_intent`); from that line on the step belongs to the host's rollback;
- a step whose host cannot be reached never started: it leaves the rollback again;
- a step killed or cut short by an abort decided elsewhere is not this host's failure,
  but it stays in the rollback (it may have half run).

What a host's failure means for the run (the failure budget) is the run driver's call (apply.py).
"""

from __future__ import annotations

from rollout.checks import excerpt
from rollout.engine.core import EngineCore
from rollout.engine.outcomes import AppliedStep, Cause, ended, result_data, result_outcome
from rollout.engine.prepare import HostPlan
from rollout.engine.processes import command_env, new_token
from rollout.engine.uploads import upload_key, upload_step
from rollout.errors import ConnectError, ExecutorError
from rollout.event import Event, EventKind
from rollout.executors.base import CommandResult, Executor, become_arg
from rollout.model import Step
from rollout.units import format_duration


class StepsMixin(EngineCore):
    """The Engine's step on a host: applied by a host worker, it says why the host failed, if it did."""

    def _apply_step(self, wave: int, host: HostPlan, applied: AppliedStep) -> Cause | None:
        """Run a step (with its retries), then its verify: the cause when this host failed."""
        ex = self.executor(host.name)
        result = self._run_attempts(wave, host, applied, ex)
        if result is None or isinstance(result, Cause):
            return result  # never started (nothing to roll back), or the host could not be reached
        if not result.ok:
            return self._step_failed(host, applied, result)
        applied.state = "applied"
        return self._verify_step(wave, host, applied.step, ex)

    def _run_attempts(
        self, wave: int, host: HostPlan, applied: AppliedStep, ex: Executor
    ) -> CommandResult | Cause | None:
        """The step's attempts until one succeeds, is killed, or the run aborts.

        None when the abort refused the first intent: the step never started.
        """
        step = applied.step
        attempts = step.retries + 1
        result: CommandResult | None = None
        for attempt in range(1, attempts + 1):
            outcome = self._attempt(wave, host, applied, ex, attempt, attempts)
            if outcome is None:
                # The abort refused the intent: never started, or a retry the abort cut
                # short (then the earlier attempt's result stands).
                return result
            if isinstance(outcome, Cause):
                return outcome
            result = outcome
            if result.ok or result.cancelled or self._abort.is_set() or attempt == attempts:
                break
            if self._abort.wait(step.retry_delay):
                break
        assert result is not None
        return result

    def _attempt(
        self, wave: int, host: HostPlan, applied: AppliedStep, ex: Executor, attempt: int, attempts: int
    ) -> CommandResult | Cause | None:
        """One attempt: intent, command, result line. None when the abort refused the intent."""
        step = applied.step
        token = new_token()
        become = self.become_for(host.name, step)
        intent = Event(
            EventKind.STEP_INTENT,
            wave=wave,
            host=host.name,
            step=step.name,
            data={
                "command": step.command,
                **({"upload": {"src": step.upload.src, "dest": step.upload.dest}} if step.upload else {}),
                "attempt": attempt,
                "timeout": format_duration(step.timeout),
                "index": applied.index,
                "attempt_id": token,
                **({"become_user": become.user} if become is not None else {}),
            },
        )
        if not self._emit_intent(intent):
            return None
        self._track_applied(applied)
        facts: dict[str, object] = {}
        try:
            if step.upload is not None:
                result, facts = upload_step(
                    ex,
                    step,
                    loaded=self.schedule.loaded,
                    variables=host.variables.values,
                    key=upload_key(self.schedule.run_id, applied.index),
                )
            else:
                assert step.run is not None
                result = ex.run(
                    step.run,
                    timeout=step.timeout,
                    env=command_env(self.schedule.run_id, token),
                    on_start=self._record_process(wave, host.name, step.name, "step", token, become),
                    **become_arg(become),
                )
        except ConnectError as exc:
            if attempt == 1:
                return self._not_started(wave, host, applied, exc)
            # an earlier attempt ran on the host: the step stays in the rollback
            result = CommandResult(host.name, step.command, None, "", str(exc), 0.0)
        except ExecutorError as exc:  # reached the host: the command may have started
            result = CommandResult(host.name, step.command, None, "", str(exc), 0.0)
        self._emit(
            Event(
                EventKind.STEP_RESULT,
                wave=wave,
                host=host.name,
                step=step.name,
                outcome=result_outcome(result),
                data={
                    **result_data(result),
                    **({"upload": facts} if facts else {}),
                    "attempt": attempt,
                    "of": attempts,
                },
            ),
            sync=True,
        )
        return result

    def _step_failed(self, host: HostPlan, applied: AppliedStep, result: CommandResult) -> Cause | None:
        """A step's command did not succeed: the cause, unless an abort decided elsewhere cut it short."""
        step = applied.step
        applied.state = "failed"
        if self._abort.is_set() and (result.cancelled or self._cause_kind() == "interrupt"):
            # Killed or cut short by an abort decided elsewhere: not a failure of this host.
            # The step stays in the rollback (it may have half run).
            return None
        what = "timed out" if result.timed_out else ("was killed" if result.cancelled else ended(result))
        tail = excerpt(result.stderr or result.stdout, 300)
        return Cause(
            "step",
            f"step '{step.name}' {what} on {host.name}" + (f": {tail}" if tail else ""),
            host=host.name,
            step=step.name,
            detail={"command": step.command, **result_data(result)},
        )

    def _verify_step(self, wave: int, host: HostPlan, step: Step, ex: Executor) -> Cause | None:
        """Run the step's verify checks in order: the cause of the first that fails."""
        for check in step.verify:
            if self._abort.is_set():
                return None
            verdict = self.runner.run(check, ex)
            self._emit(
                Event(
                    EventKind.VERIFY,
                    wave=wave,
                    host=host.name,
                    step=step.name,
                    outcome="ok" if verdict.ok else "failed",
                    data={"check": check.label, **verdict.to_dict()},
                )
            )
            if not verdict.ok and self._abort.is_set():
                return None  # retries cut short by the abort: the rollback takes it from here
            if not verdict.ok:
                return Cause(
                    "verify",
                    f"verification '{check.label}' of step '{step.name}' failed on {host.name}: {verdict.summary}",
                    host=host.name,
                    step=step.name,
                    check=check.label,
                    detail=dict(verdict.observed),
                )
        return None

    def _not_started(self, wave: int, host: HostPlan, applied: AppliedStep, exc: ConnectError) -> Cause:
        """The host could not be reached: the step never started, so there is nothing to roll back."""
        self._untrack_applied(applied)
        self._emit(
            Event(
                EventKind.STEP_RESULT,
                wave=wave,
                host=host.name,
                step=applied.step.name,
                outcome="not_started",
                data={"error": str(exc), "stderr": str(exc), "exit_code": None, "duration": 0.0},
            ),
            sync=True,
        )
        return Cause(
            "connect",
            f"cannot reach {host.name} to run step '{applied.step.name}': {exc}",
            host=host.name,
            step=applied.step.name,
        )
