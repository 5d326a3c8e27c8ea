"""Steps and the wave strategy: what changes on each host, and in what order.

Pure data with validation, no I/O.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from rollout.model.base import BakeDuration, CountOrPercent, Delay, Duration, Model, Name, WaveSize
from rollout.model.checks import Check
from rollout.units import Percent

#: `rollback` of an upload step that gives none: restore the previous content (or remove dest).
AUTOMATIC_ROLLBACK = ""


class Upload(Model):
    """A file to put on the host: `src` (relative to the plan's directory) replaces `dest` atomically."""

    src: str = Field(min_length=1, description="local file, relative to the plan's directory")
    dest: str = Field(min_length=1, description="absolute path on the target")
    mode: int = Field(default=0o644, ge=0, le=0o7777, description="permissions, e.g. 0o640 or 416")
    owner: str | None = Field(default=None, description="'user' or 'user:group' (chown on the target)")
    template: bool = Field(default=False, description="render {{ vars }} of the host into the file (no quoting)")

    @field_validator("dest")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") and "{{" not in value:
            raise ValueError("dest must be an absolute path on the target")
        return value

    @field_validator("mode", mode="before")
    @classmethod
    def _octal(cls, value: Any) -> Any:
        # YAML reads 0644 as the decimal 644; an operator means octal, so say it in octal.
        if isinstance(value, str):
            try:
                return int(value, 8)
            except ValueError:
                raise ValueError(f"mode must be octal, like '0644': got {value!r}") from None
        return value


class Step(Model):
    """One change: run (or upload), then verify; rollback undoes it (or `rollback: none`)."""

    name: Name
    run: str | None = None
    upload: Upload | None = None
    verify: list[Check] = Field(default_factory=list)
    rollback: str = Field(
        description="the command that undoes this step, or 'none' if it is irreversible "
        "(an upload step without it restores the previous file)"
    )
    timeout: Duration = 300.0
    rollback_timeout: Duration | None = None
    retries: int = Field(default=0, ge=0, le=100)
    retry_delay: Delay = 1.0
    become: bool | None = Field(
        default=None, description="run (and roll back) through sudo; default: the environment's 'become'"
    )
    become_user: str | None = Field(default=None, min_length=1, description="sudo -u USER (default root)")

    @model_validator(mode="before")
    @classmethod
    def _rollback_required(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("run" in data) == ("upload" in data):
            raise ValueError("a step needs exactly one of 'run' (a command) or 'upload' (a file)")
        if isinstance(data, dict) and "upload" in data and "rollback" not in data:
            return {**data, "rollback": AUTOMATIC_ROLLBACK}
        if isinstance(data, dict) and "rollback" not in data:
            raise ValueError(
                "a step needs 'rollback': the command that undoes it, or 'rollback: none' to mark it irreversible"
            )
        if isinstance(data, dict) and data.get("rollback") is None:
            return {**data, "rollback": "none"}
        return data

    @model_validator(mode="after")
    def _become_runs_commands(self) -> Step:
        if self.upload is not None and (self.become or self.become_user):
            raise ValueError("become applies to commands: an upload step writes over SFTP as the login user")
        return self

    @property
    def irreversible(self) -> bool:
        """True when the plan says `rollback: none`."""
        return self.rollback.strip().lower() == "none"

    @property
    def restores_upload(self) -> bool:
        """True for an upload step whose rollback restores the previous file."""
        return self.upload is not None and self.rollback == AUTOMATIC_ROLLBACK

    @property
    def rollback_command(self) -> str:
        """The rollback as one line: the command, or what an upload's automatic rollback does."""
        if self.upload is not None and self.restores_upload:
            return f"restore the previous {self.upload.dest} (or remove it if it did not exist)"
        return self.rollback

    @property
    def command(self) -> str:
        """What the step does, as one line for the journal and the display."""
        if self.upload is not None:
            return f"upload {self.upload.src} -> {self.upload.dest}"
        assert self.run is not None
        return self.run


# Hosts at once within a wave when the plan does not say: all of a wave of up to 64 hosts
# (the common case runs every host together), and a bounded thread pool beyond that.
DEFAULT_CONCURRENCY = 64


def _all_hosts_in_one_wave() -> list[int | Percent | str]:
    return [Percent(100.0)]


class Strategy(Model):
    """Waves, bake time, failure budget and concurrency."""

    waves: list[WaveSize] = Field(
        default_factory=_all_hosts_in_one_wave,
        description="cumulative targets: [1, 25%, 100%] = one host, then up to a quarter, then all",
    )
    bake: BakeDuration = 0.0
    failure_budget: CountOrPercent = Field(
        default=0, description="hosts that may fail (and are rolled back) before the run aborts"
    )
    concurrency: int | None = Field(
        default=None,
        ge=1,
        description=f"hosts at once within a wave (default: all of the wave, up to {DEFAULT_CONCURRENCY})",
    )

    @field_validator("waves")
    @classmethod
    def _non_empty(cls, value: list[Any]) -> list[Any]:
        if not value:
            raise ValueError("waves must list at least one wave")
        return value
