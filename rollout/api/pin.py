"""Pinning what was reviewed: the pin of a rendered plan, the lock file, and why a run no longer matches.

The pin is sha256 over the canonical JSON of what a run on one environment would execute:
the plan digest, the environment, the `--var` overrides and the rendered schedule
(`schedule_as_dict`). It is a pure function of a dry-run schedule: rendered with the fixed
run id of a dry run, and with every secret value redacted, so `rollout plan` (secrets need
not be set) and `rollout run` (secrets set) agree.

Invariant: no secret's value ever reaches the pin's input or a lock file in clear. A secret
given with `--var` enters both as a salted, stretched hash (so changing it changes the pin);
a secret written in the plan is covered by the plan digest; a secret read from the process
environment is not part of what a reviewer sees, and is not pinned.

A run is admitted only when the pin it renders now equals the one reviewed; otherwise
`PinMismatch` (exit 3) says what changed: files, variables, hosts, else rendered commands.
Nothing here changes a target or starts a run.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rollout.errors import Refused, UsageError

if TYPE_CHECKING:
    from rollout.api.running import Prepared
    from rollout.engine.prepare import Schedule
    from rollout.executors.base import Target

LOCK_MARKER = "rollout-lock"
LOCK_FORMAT = 1
PIN_FORMAT = 1
REDACTED = "***"
# pbkdf2 rounds for a secret --var's hash: a lock file may be shared, and a short secret
# must not be recovered from it by hashing guesses at full speed (~30 ms per secret here)
SECRET_HASH_ROUNDS = 100_000


class PinMismatch(Refused):
    """The plan now renders differently from the pinned one: refused before any change (exit 3)."""

    def __init__(self, message: str, changes: list[str]) -> None:
        super().__init__(message)
        self.changes = changes


def canonical_json(value: Any) -> bytes:
    """The one byte form hashed: sorted keys, no whitespace, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")


def secret_hash(value: str, *, plan: str, env: str, name: str) -> str:
    """A secret --var's value as a salted, stretched hash: equal values give equal hashes, nothing more."""
    salt = f"rollout-pin\0{plan}\0{env}\0{name}".encode()
    derived = hashlib.pbkdf2_hmac("sha256", value.encode("utf-8"), salt, SECRET_HASH_ROUNDS)
    return f"pbkdf2-sha256:{SECRET_HASH_ROUNDS}:{derived.hex()}"


def redact(value: Any, secrets: frozenset[str]) -> Any:
    """`value` with every secret substring of every string replaced by ***, longest secret first."""
    ordered = sorted((s for s in secrets if s), key=len, reverse=True)

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            for secret in ordered:
                item = item.replace(secret, REDACTED)
            return item
        if isinstance(item, Mapping):
            return {walk(k): walk(v) for k, v in item.items()}
        if isinstance(item, list | tuple):
            return [walk(v) for v in item]
        return item

    return walk(value)


def secret_names(schedule: Schedule) -> frozenset[str]:
    """The variables the plan declares secret (on any host of the environment)."""
    return frozenset(n for h in schedule.hosts.values() for n in h.variables.secrets)


def pinned_overrides(schedule: Schedule, overrides: Mapping[str, str]) -> dict[str, Any]:
    """The --var overrides as pinned: plain values, and `{"secret": hash}` for a secret one."""
    secret = secret_names(schedule)
    return {
        name: (
            {"secret": secret_hash(value, plan=schedule.plan_name, env=schedule.env_name, name=name)}
            if name in secret
            else value
        )
        for name, value in sorted(overrides.items())
    }


def rendered_schedule(schedule: Schedule) -> dict[str, Any]:
    """The dry-run schedule as data with secrets redacted: what a reviewer saw."""
    from rollout.api.plans import schedule_as_dict

    data: dict[str, Any] = portable(redact(schedule_as_dict(schedule), schedule.secret_values), schedule)
    return data


def portable(value: Any, schedule: Schedule) -> Any:
    """`value` with the plan's directory written as `{{ plan_dir }}` wherever it was rendered in.

    The same files checked out elsewhere (a reviewer's laptop, each CI job's workspace) are
    the same plan: the pin is about the files' bytes (the plan digest) and what they render
    to, not where the checkout happens to be.
    """
    plan_dir = str(schedule.loaded.path.parent.resolve())
    if plan_dir == os.sep:  # a plan at the root: "/" is in every path, replacing it would blur them all
        return value
    return _replace_in_strings(value, plan_dir, "{{ plan_dir }}")


def _replace_in_strings(item: Any, old: str, new: str) -> Any:
    if isinstance(item, str):
        return item.replace(old, new)
    if isinstance(item, Mapping):
        return {_replace_in_strings(k, old, new): _replace_in_strings(v, old, new) for k, v in item.items()}
    if isinstance(item, list | tuple):
        return [_replace_in_strings(v, old, new) for v in item]
    return item


def pin_of(schedule: Schedule, overrides: Mapping[str, str]) -> str:
    """The pin of a dry-run schedule (`rollout.api.schedule`) rendered with `overrides`."""
    schedule = reviewable(schedule, overrides)
    return _pin(schedule, pinned_overrides(schedule, overrides), rendered_schedule(schedule))


def reviewable(schedule: Schedule, overrides: Mapping[str, str]) -> Schedule:
    """The dry-run schedule as pinned: secrets read from the process environment as a fixed placeholder.

    Such a secret is not in the plan's bytes, and whether it was set where `rollout plan`
    ran, or how its value needs shell quoting ('***' or ***), must not change the pin.
    """
    from dataclasses import replace

    from rollout.engine.prepare import prepare_schedule
    from rollout.model import SecretVar

    plan, env_name = schedule.loaded.plan, schedule.env_name
    env = plan.environments[env_name]
    layers = [plan.vars, env.vars, *(env.host(h).vars for h in env.hosts)]
    if not any(isinstance(v, SecretVar) and v.env is not None for layer in layers for v in layer.values()):
        return schedule
    placeholder = SecretVar(value=REDACTED)

    def fixed(layer: Mapping[str, Any]) -> dict[str, Any]:
        return {k: placeholder if isinstance(v, SecretVar) and v.env is not None else v for k, v in layer.items()}

    hosts = {h: env.host(h).model_copy(update={"vars": fixed(env.host(h).vars)}) for h in env.hosts}
    environments = {**plan.environments, env_name: env.model_copy(update={"vars": fixed(env.vars), "hosts": hosts})}
    plan = plan.model_copy(update={"vars": fixed(plan.vars), "environments": environments})
    loaded = replace(schedule.loaded, plan=plan)
    return prepare_schedule(loaded, env_name, overrides=overrides, run_id=schedule.run_id, for_validation=True)


def _pin(schedule: Schedule, pinned: Mapping[str, Any], rendered: Mapping[str, Any]) -> str:
    """sha256 of the canonical pin input: plan digest, environment, pinned overrides, rendered schedule."""
    document = {
        "pin_format": PIN_FORMAT,
        "plan_digest": schedule.digest,
        "environment": schedule.env_name,
        "overrides": pinned,
        "schedule": rendered,
    }
    return "sha256:" + hashlib.sha256(canonical_json(document)).hexdigest()


def _inventory(schedule: Schedule) -> dict[str, Any]:
    """Each host of the environment: how it is reached and its groups."""
    env = schedule.loaded.plan.environments[schedule.env_name]
    return {
        name: {
            "connection": h.target.connection,
            "address": h.target.address,
            "port": h.target.port,
            "user": h.target.user,
            "groups": list(env.host(name).groups),
            **_route(h.target),
        }
        for name, h in schedule.hosts.items()
    }


def _route(target: Target) -> dict[str, Any]:
    """How a host is reached beyond its address: its jump hosts or proxy command (absent when direct).

    Left out when there is none, so that a lock of a directly reached fleet keeps its digest.
    """
    route: dict[str, Any] = {}
    if target.jumps:
        route["via"] = [
            {"name": hop.name, "address": hop.address, "port": hop.port, "user": hop.user} for hop in target.jumps
        ]
    if target.proxy_command:
        route["proxy_command"] = target.proxy_command
    return route


def _variables(schedule: Schedule, overrides: Mapping[str, str]) -> dict[str, Any]:
    """The environment's variables as rendered (plan < environment < --var); secret ones only named."""
    from rollout.errors import PlanError
    from rollout.planfile import host_variables
    from rollout.template import TemplateProblem

    loaded, env = schedule.loaded, schedule.env_name
    variables = host_variables(loaded, env, None, overrides=overrides, run_id="dry-run", for_validation=True)
    secret = secret_names(schedule) | variables.secrets
    out: dict[str, Any] = {}
    for name in sorted(variables.origin):
        if name in secret:
            out[name] = {"secret": True}
            continue
        try:
            out[name] = variables.values[name]
        except (PlanError, TemplateProblem):
            # it refers to a host's variables: its effect is in each host's rendered schedule
            out[name] = {"per_host": True}
    return out


def lock_document(schedule: Schedule, overrides: Mapping[str, str], lock_path: Path) -> dict[str, Any]:
    """Everything a lock file holds (also built again at run time, to say what changed)."""
    from rollout import __version__

    loaded = schedule.loaded
    schedule = reviewable(schedule, overrides)
    secrets = schedule.secret_values
    try:
        shown_path = os.path.relpath(loaded.path.resolve(), lock_path.resolve().parent)
    except ValueError:  # another drive (Windows): no relative path exists
        shown_path = str(loaded.path.resolve())
    pinned = pinned_overrides(schedule, overrides)
    rendered = rendered_schedule(schedule)
    document = {
        LOCK_MARKER: LOCK_FORMAT,
        "tool_version": __version__,
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "plan": {
            "name": loaded.plan.name,
            "path": shown_path,
            "digest": loaded.digest,
            "files": {
                name: "sha256:" + hashlib.sha256(data).hexdigest() for name, data in sorted(loaded.files.items())
            },
        },
        "environment": schedule.env_name,
        "overrides": pinned,
        "variables": portable(redact(_variables(schedule, overrides), secrets), schedule),
        "inventory": redact(_inventory(schedule), secrets),
        "schedule": rendered,
        "pin": _pin(schedule, pinned, rendered),
    }
    # as it reads back from the file (tuples as lists, dates as text), so a comparison is like for like
    result: dict[str, Any] = json.loads(json.dumps(document, ensure_ascii=False, default=str))
    return result


def write_lock(path: Path | str, schedule: Schedule, overrides: Mapping[str, str]) -> dict[str, Any]:
    """Write the lock file for a dry-run schedule atomically; the document written."""
    from rollout.atomic import write_atomic

    path = Path(path)
    root = schedule.loaded.path.resolve().parent
    if path.resolve() in {(root / name).resolve() for name in schedule.loaded.files}:
        raise UsageError(f"--out {path}: that is one of the plan's own files; name a new file for the lock")
    document = lock_document(schedule, overrides, path)
    try:
        write_atomic(path, json.dumps(document, indent=2, ensure_ascii=False, default=str) + "\n", mode=0o644)
    except OSError as exc:
        raise UsageError(f"--out {path}: cannot write the lock file: {exc.strerror or exc}") from None
    return document


@dataclass(frozen=True)
class PlanLock:
    """A lock file as read back: where it is and what it pinned."""

    path: Path
    document: Mapping[str, Any]

    @property
    def pin(self) -> str:
        """The pin the lock was written with."""
        return str(self.document["pin"])

    @property
    def environment(self) -> str:
        """The environment the lock pins."""
        return str(self.document["environment"])

    @property
    def plan_path(self) -> Path:
        """The plan file, resolved against the lock's directory."""
        return Path(os.path.normpath(self.path.parent / str(self.document["plan"]["path"])))

    def plain_overrides(self) -> dict[str, str]:
        """The --var overrides the lock recorded in clear."""
        return {k: str(v) for k, v in self.document["overrides"].items() if not isinstance(v, Mapping)}

    def secret_overrides(self) -> list[str]:
        """The names of secret --var overrides (only their hashes are in the lock)."""
        return [k for k, v in self.document["overrides"].items() if isinstance(v, Mapping)]


def looks_like_lock(path: Path) -> bool:
    """Whether `path` is meant as a lock file: named *.lock, or a JSON object with the lock marker."""
    if path.suffix == ".lock":
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(64).lstrip()
    except OSError:
        return False
    if not head.startswith(b"{"):
        return False
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(document, dict) and LOCK_MARKER in document


_REQUIRED = {"pin": str, "environment": str, "plan": dict, "overrides": dict}


def read_lock(path: Path | str) -> PlanLock:
    """Read a lock file; anything that is not one this rollout writes is a usage error naming the file."""
    path = Path(path)
    try:
        document = json.loads(path.read_bytes())
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the lock file: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"{path}: not a lock file (not JSON: {exc})") from None
    if not isinstance(document, dict) or LOCK_MARKER not in document:
        raise UsageError(
            f'{path}: not a lock file (no "{LOCK_MARKER}" format marker); write one with `rollout plan --out`'
        )
    if document[LOCK_MARKER] != LOCK_FORMAT:
        raise UsageError(
            f"{path}: lock file format {document[LOCK_MARKER]!r}, this rollout reads format {LOCK_FORMAT}; "
            "write it again with this version's `rollout plan --out`"
        )
    for key, kind in _REQUIRED.items():
        if not isinstance(document.get(key), kind):
            raise UsageError(f"{path}: damaged lock file: '{key}' is missing or not a {kind.__name__}")
    if not isinstance(document["plan"].get("path"), str):
        raise UsageError(f"{path}: damaged lock file: 'plan.path' is missing")
    return PlanLock(path, document)


def _overrides_from_lock(lock: PlanLock, env: str | None, given: Mapping[str, str]) -> dict[str, str]:
    """The lock's environment and variables, with what the command line gave on top (checked)."""
    if env is not None and env != lock.environment:
        raise UsageError(
            f"{lock.path} pins environment '{lock.environment}', not '{env}': "
            f"write a lock for '{env}' with `rollout plan --env {env} --out`"
        )
    missing = [name for name in lock.secret_overrides() if name not in given]
    if missing:
        again = " ".join(f"--var {name}=..." for name in missing)
        raise UsageError(
            f"{lock.path} was written with secret variable(s) {', '.join(missing)} given by --var; "
            f"the lock keeps only a hash: give them again ({again})"
        )
    return {**lock.plain_overrides(), **given}


def prepare_pinned(
    plan: Path | str,
    env: str | None,
    *,
    overrides: Mapping[str, str] | None = None,
    expect_pin: str | None = None,
) -> Prepared:
    """`prepare` for a run that must execute exactly what was reviewed.

    `plan` is a plan file or a lock file written by `rollout plan --out` (environment and
    variables then come from it; `overrides` add to them). The plan is loaded once, its
    dry-run schedule pinned, and only when the pin equals the lock's (or `expect_pin`) is it
    scheduled for the run, from the same loaded bytes. PinMismatch (exit 3) otherwise.
    """
    from rollout.api.running import Prepared, prepare
    from rollout.engine.prepare import prepare_schedule
    from rollout.planfile import load_plan
    from rollout.runstore import new_run_id

    given = dict(overrides or {})
    lock = read_lock(plan) if looks_like_lock(Path(plan)) else None
    expect_pin = _normalised_pin(expect_pin)
    if lock is None and expect_pin is None:
        if env is None:
            raise UsageError("run: name the environment with --env (or give a lock file from `rollout plan --out`)")
        return prepare(plan, env, overrides=given)
    if lock is not None:
        given = _overrides_from_lock(lock, env, given)
        env = lock.environment
        if expect_pin is not None and expect_pin != lock.pin:
            raise UsageError(f"--expect-digest {expect_pin} is not the pin of {lock.path} ({lock.pin})")
        expect_pin = lock.pin
    if env is None or expect_pin is None:
        raise UsageError("run: --expect-digest needs --env: the pin is of one environment")
    loaded = load_plan(lock.plan_path if lock is not None else Path(plan))
    dry = prepare_schedule(loaded, env, overrides=given, for_validation=True)
    now = pin_of(dry, given)
    if now != expect_pin:
        raise _mismatch(lock, dry, given, expect_pin, now)
    schedule = prepare_schedule(loaded, env, overrides=given, run_id=new_run_id())
    return Prepared(loaded, schedule, given)


def _normalised_pin(pin: str | None) -> str | None:
    """A pin as `rollout plan` prints it; the bare hex is accepted too."""
    if pin is None:
        return None
    pin = pin.strip()
    return pin if pin.startswith("sha256:") else f"sha256:{pin}"


def _mismatch(
    lock: PlanLock | None, dry: Schedule, overrides: Mapping[str, str], expected: str, now: str
) -> PinMismatch:
    """The refusal, naming what changed when a lock says what was reviewed."""
    head = f"refused: {dry.loaded.shown} on '{dry.env_name}' no longer renders to the pinned plan; nothing was changed"
    pins = [f"  pinned {expected}", f"  now    {now} (plan digest {dry.digest})"]
    if lock is None:
        return PinMismatch("\n".join([head, *pins]), [])
    from rollout.api.pin_changes import what_changed

    changes = what_changed(lock.document, lock_document(dry, overrides, lock.path))
    shown = [f"  - {c}" for c in changes] or [
        "  - nothing this rollout can name (the lock was written by another version?)"
    ]
    return PinMismatch("\n".join([head, f"  what changed since {lock.path} was written:", *shown, *pins]), changes)
