"""`rollout unlock`: force the environment lock of a stuck run, only with its holder's lock id."""

from __future__ import annotations

from typing import Annotated

import typer

from rollout.cli.app import LockDirOption, app, fail, terminal
from rollout.errors import RolloutError


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
    from rollout import api

    try:
        holder = api.unlock(env, plan=plan_name, lock_id=lock_id, lock_dir=lock_dir_opt)
    except RolloutError as exc:
        fail(exc)
    terminal.print(f"forced the lock of plan {plan_name!r} on {env!r}, held by {holder.describe()}")
    terminal.print(
        f"  if pid {holder.pid} on {holder.host} is still running it may still change targets: stop it, "
        f"then `rollout recover {holder.run_id}` to roll back what it left (new runs refuse until then)"
    )
