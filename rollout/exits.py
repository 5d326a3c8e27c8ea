"""The one map from how something ended to the exit code: the CI contract in one table.

Every command ends through `exit_status_for`: a run's outcome (a string from
`rollout.event.Outcome`) or an exception. Nothing else in rollout picks a number.

    0   success (also: a recover that found nothing applied)
    1   rolled back: a step, verify, guard or the failure budget stopped the run
    2   usage: bad arguments, an invalid plan, an unreadable metadata document
    3   refused before any change: lock held, freeze window, a pre-check, a host unreachable
    4   rollback failed: steps are still applied, manual action needed
    5   the journal could not be written or trusted, or rollout itself failed
    130 interrupted (and rolled back)
"""

from __future__ import annotations

from rollout.errors import (
    ExecutorError,
    ExitStatus,
    JournalError,
    MetadataError,
    PlanError,
    Refused,
    RolloutError,
    UsageError,
)
from rollout.event import Outcome

FOR_OUTCOME: dict[str, ExitStatus] = {
    Outcome.SUCCEEDED: ExitStatus.SUCCESS,
    Outcome.ROLLED_BACK: ExitStatus.ROLLED_BACK,
    Outcome.REFUSED: ExitStatus.REFUSED,
    Outcome.ROLLBACK_FAILED: ExitStatus.ROLLBACK_FAILED,
    Outcome.INTERRUPTED: ExitStatus.INTERRUPTED,
    Outcome.JOURNAL_FAILED: ExitStatus.JOURNAL,
    Outcome.INTERNAL_ERROR: ExitStatus.JOURNAL,
    Outcome.NOT_STARTED: ExitStatus.SUCCESS,
}

# Looked up along the exception's MRO, so the most specific class decides.
FOR_ERROR: dict[type[BaseException], ExitStatus] = {
    PlanError: ExitStatus.USAGE,
    UsageError: ExitStatus.USAGE,
    MetadataError: ExitStatus.USAGE,
    Refused: ExitStatus.REFUSED,
    ExecutorError: ExitStatus.REFUSED,
    JournalError: ExitStatus.JOURNAL,
    RolloutError: ExitStatus.JOURNAL,
    KeyboardInterrupt: ExitStatus.INTERRUPTED,
}


def exit_status_for(ended: str | BaseException) -> ExitStatus:
    """The exit code for a run outcome or an exception; anything unforeseen is 5, never 1.

    1 tells CI "rolled back cleanly"; a bug in rollout must not be read that way, so an
    unknown outcome or an exception that is not ours maps to 5 (evidence may be incomplete).
    """
    if isinstance(ended, str):
        return FOR_OUTCOME.get(ended, ExitStatus.JOURNAL)
    for cls in type(ended).__mro__:
        status = FOR_ERROR.get(cls)
        if status is not None:
            return status
    return ExitStatus.JOURNAL
