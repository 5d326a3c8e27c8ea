"""Where runs and locks live when the caller does not say: the same defaults for the CLI and Python."""

from __future__ import annotations

import os
from pathlib import Path


def state_dir(option: Path | str | None = None) -> Path:
    """Where runs are kept: the given directory, $ROLLOUT_STATE_DIR, or ./.rollout."""
    if option is not None:
        return Path(option)
    env = os.environ.get("ROLLOUT_STATE_DIR")
    return Path(env) if env else Path(".rollout")


def lock_dir(option: Path | str | None = None) -> Path:
    """Where environment locks live: the given directory, $ROLLOUT_LOCK_DIR, or $XDG_STATE_HOME/rollout/locks."""
    if option is not None:
        return Path(option)
    env = os.environ.get("ROLLOUT_LOCK_DIR")
    if env:
        return Path(env)
    from rollout.lock import default_lock_dir

    return default_lock_dir()
