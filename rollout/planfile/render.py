"""Variables in scope for a host, and the plan's strings rendered for it.

Plan vars < environment vars < host vars < --var, plus built-ins; a variable may refer to
others. Secret values are tracked so sinks can redact them; shell fields get quoted
substitutions. All rendering for one plan shares one budget, so no plan can make it
unbounded. It must never run anything: rendering is pure.
"""

from __future__ import annotations

import difflib
import os
import re
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from rollout.errors import PlanError, TemplateError
from rollout.model import SecretVar
from rollout.planfile.loading import LoadedPlan
from rollout.planfile.locations import Loc, format_loc
from rollout.template import RenderBudget, TemplateProblem, TemplateTooLarge, render

# (model, field) pairs whose strings are shell commands: substituted values are quoted.
SHELL_FIELDS: frozenset[tuple[str, str]] = frozenset(
    {
        ("Step", "run"),
        ("Step", "rollback"),
        ("CommandCheck", "run"),
        ("DocumentSource", "command"),
        ("ParityFact", "command"),
    }
)
REDACTED = "***"


@dataclass(frozen=True)
class Variables:
    """The variables in scope for one host, and which values are secret."""

    values: Mapping[str, Any]
    secrets: frozenset[str]
    origin: dict[str, Loc]
    # shared by every host and environment rendered for one plan: bounds the total work
    budget: RenderBudget = field(default_factory=RenderBudget)


def _var_value(value: Any, *, for_validation: bool, name: str) -> tuple[Any, bool]:
    if isinstance(value, SecretVar):
        if value.value is not None:
            return value.value, True
        assert value.env is not None
        found = os.environ.get(value.env)
        if found is None:
            if for_validation:
                return REDACTED, True
            raise TemplateError(f"secret variable '{name}' reads ${value.env}, which is not set")
        return found, True
    return value, False


def host_variables(
    loaded: LoadedPlan,
    env_name: str,
    host_name: str | None,
    *,
    overrides: Mapping[str, str] | None = None,
    run_id: str = "RUN_ID",
    for_validation: bool = False,
    budget: RenderBudget | None = None,
) -> Variables:
    """Plan vars < environment vars < host vars < --var, plus built-ins, rendered."""
    plan = loaded.plan
    env = plan.environments[env_name]
    raw: dict[str, Any] = {}
    origin: dict[str, Loc] = {}
    secrets: set[str] = set()
    layers: list[tuple[Loc, Mapping[str, Any]]] = [
        (("vars",), plan.vars),
        (("environments", env_name, "vars"), env.vars),
    ]
    host = env.host(host_name) if host_name is not None else None
    if host is not None:
        layers.append((("environments", env_name, "hosts", str(host_name), "vars"), host.vars))
    for base, layer in layers:
        for name, value in layer.items():
            try:
                resolved, secret = _var_value(value, for_validation=for_validation, name=name)
            except TemplateError as exc:
                raise TemplateError(exc.message, **_location(loaded, (*base, name))) from None
            raw[name] = resolved
            origin[name] = (*base, name)
            if secret:
                # once declared secret, a name stays secret whatever layer overrides its value
                secrets.add(name)
    for name, value in (overrides or {}).items():
        raw[name] = value
        origin[name] = ()
    builtins: dict[str, Any] = {
        "env": env_name,
        "run_id": run_id,
        "plan": plan.name,
        "plan_dir": str(loaded.path.parent.resolve()),
    }
    if host_name is not None and host is not None:
        # Without an address, a local host is this machine and an ssh host is reached by its alias.
        fallback = "127.0.0.1" if env.connection == "local" else host_name
        builtins.update(host=host_name, address=host.address or fallback)
    for name in builtins:
        if name in raw and origin[name]:
            raise loaded.error(origin[name], f"'{name}' is a built-in variable and cannot be redefined")
    budget = budget if budget is not None else RenderBudget()
    scope = _Scope(loaded, {**raw, **builtins}, origin, budget=budget, where=(env_name, host_name))
    return Variables(values=scope, secrets=frozenset(secrets), origin=origin, budget=budget)


BUILTIN_VARIABLES = ("env", "run_id", "plan", "plan_dir", "host", "address")
_TEMPLATE_NAME = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)")


def plan_variable_names(loaded: LoadedPlan) -> set[str]:
    """Every variable the plan defines (at any level) or names in a template."""
    plan = loaded.plan
    names = set(plan.vars)
    for env in plan.environments.values():
        names.update(env.vars)
        for host_name in env.hosts:
            names.update(env.host(host_name).vars)
    for data in loaded.files.values():
        names.update(_TEMPLATE_NAME.findall(data.decode("utf-8")))
    return names - set(BUILTIN_VARIABLES)


def check_overrides(loaded: LoadedPlan, overrides: Mapping[str, str] | None) -> None:
    """A `--var` must name a variable the plan defines or uses: a typo would be ignored."""
    if not overrides:
        return
    known = plan_variable_names(loaded)
    for name in overrides:
        if name in BUILTIN_VARIABLES:
            raise PlanError(f"--var {name}: '{name}' is a built-in variable and cannot be set", file=loaded.shown)
        if name in known:
            continue
        close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
        if close:
            hint = "did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
        elif known:
            listed = sorted(known)
            hint = "its variables: " + ", ".join(listed[:20]) + (", ..." if len(listed) > 20 else "")
        else:
            hint = "it has no variables"
        raise PlanError(
            f"--var {name}: the plan neither defines nor uses a variable '{name}' ({hint})",
            file=loaded.shown,
        )


class _Scope(Mapping[str, Any]):
    """Variables resolved on first use, so a variable may refer to others (and to `host`)."""

    def __init__(
        self,
        loaded: LoadedPlan,
        raw: dict[str, Any],
        origin: dict[str, Loc],
        *,
        budget: RenderBudget,
        where: tuple[str, str | None],
    ) -> None:
        self._loaded = loaded
        self._raw = raw
        self._origin = origin
        self._budget = budget
        self._where = where
        self._done: dict[str, Any] = {}
        self._resolving: list[str] = []

    def __getitem__(self, name: str) -> Any:
        if name in self._done:
            return self._done[name]
        value = self._raw[name]
        if isinstance(value, str) and "{{" in value:
            if name in self._resolving:
                cycle = " -> ".join([*self._resolving[self._resolving.index(name) :], name])
                raise TemplateProblem(f"variables refer to each other in a cycle: {cycle}")
            self._resolving.append(name)
            try:
                value = render(value, self, budget=self._budget)
            except TemplateTooLarge as exc:
                raise self._too_large(name, exc) from None
            except TemplateProblem as exc:
                mark = self._loaded.source.find(self._origin.get(name, ()))
                where = f" at {mark}" if mark else ""
                if f"variable '{name}'" in str(exc) or "through variable" in str(exc):
                    raise
                raise TemplateProblem(f"{exc} (through variable '{name}' defined{where})") from None
            finally:
                self._resolving.pop()
        self._done[name] = value
        return value

    def _too_large(self, name: str, exc: TemplateTooLarge) -> TemplateError:
        """The oversized variable, located where it is defined (or named as a --var)."""
        loc = self._origin.get(name)  # () for a --var, None for a built-in
        given = " (given with --var)" if loc == () else ""
        message = _where(TemplateProblem(f"variable '{name}'{given} {exc}"), *self._where)
        return TemplateError(message, **_location(self._loaded, loc or ()))

    def __contains__(self, name: object) -> bool:
        return name in self._raw

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)


def _where(exc: TemplateProblem, env_name: str, host_name: str | None) -> str:
    scope = f"environment '{env_name}'" + (f", host '{host_name}'" if host_name else "")
    return f"{exc} (in {scope})"


def _location(loaded: LoadedPlan, loc: Loc) -> dict[str, Any]:
    mark = loaded.source.find(loc)
    return {
        "file": mark.file if mark else loaded.shown,
        "line": mark.line if mark else None,
        "column": mark.column if mark else None,
        "path": format_loc(loc) or None,
    }


M = typing.TypeVar("M", bound=BaseModel)
_SCALARS = (bool, int, float)


def render_model(
    loaded: LoadedPlan,
    obj: M,
    loc: Loc,
    variables: Variables,
    *,
    env_name: str,
    host_name: str | None,
) -> M:
    """A copy of `obj` with every string field rendered; shell fields are quoted."""
    updates: dict[str, Any] = {}
    values = obj.__dict__  # where a pydantic model keeps its fields: read without getattr's detour
    for name, info in type(obj).model_fields.items():
        value = values[name]
        # Nothing to render in a string without a template or in a scalar: most of a plan
        # of thousands of steps, each rendered for every host.
        if type(value) is str:
            if "{{" not in value:
                continue
        elif value is None or type(value) in _SCALARS:
            continue
        key = info.alias or name
        shell = (type(obj).__name__, name) in SHELL_FIELDS
        new = _render_value(loaded, value, (*loc, key), variables, shell, env_name, host_name)
        if new is not value:
            updates[name] = new
    return obj.model_copy(update=updates) if updates else obj


def _render_value(
    loaded: LoadedPlan,
    value: Any,
    loc: Loc,
    variables: Variables,
    shell: bool,
    env_name: str,
    host_name: str | None,
) -> Any:
    if isinstance(value, str):
        if "{{" not in value:
            return value
        try:
            return render(value, variables.values, shell=shell, budget=variables.budget)
        except TemplateProblem as exc:
            raise TemplateError(_where(exc, env_name, host_name), **_location(loaded, loc)) from None
    if isinstance(value, BaseModel):
        return render_model(loaded, value, loc, variables, env_name=env_name, host_name=host_name)
    if isinstance(value, list):
        items = [
            _render_value(loaded, v, (*loc, i), variables, shell, env_name, host_name) for i, v in enumerate(value)
        ]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    if isinstance(value, dict):
        rendered = {
            k: _render_value(loaded, v, (*loc, k), variables, shell, env_name, host_name) for k, v in value.items()
        }
        return value if all(rendered[k] is value[k] for k in value) else rendered
    return value
