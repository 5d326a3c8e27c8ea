"""Prepare: a loaded plan + environment -> the exact schedule a run executes.

`rollout plan` prints this schedule and `rollout run` executes it; both call
`prepare_schedule`, so the dry run cannot drift from the real thing. Pure: no I/O
beyond reading secret values from the process environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from rollout.engine.uploads import check_upload_sources
from rollout.errors import PlanError, UsageError
from rollout.executors.base import Target
from rollout.model import Check, Environment, Guard, Host, Notify, ParityFact, Step
from rollout.model.hosts import BECOME_PASSWORD
from rollout.planfile import LoadedPlan, Variables, check_overrides, host_variables, render_model
from rollout.template import RenderBudget
from rollout.units import Percent


@dataclass(frozen=True)
class HostPlan:
    """Everything one host will do, rendered for that host."""

    name: str
    target: Target
    prechecks: tuple[Check, ...]
    guards: tuple[Guard, ...]
    steps: tuple[Step, ...]
    variables: Variables
    parity: tuple[ParityFact, ...] = ()  # the plan's parity facts, rendered for this host
    # The login user's sudo password (from a secret variable), for steps and checks with become.
    become_password: str | None = field(default=None, repr=False)

    def become_users(self) -> list[str]:
        """Every user this host's steps, rollbacks and checks run as through sudo, in plan order."""
        checks = [*self.prechecks, *self.guards, *(c for s in self.steps for c in s.verify)]
        users = [s.become_user or "root" for s in self.steps if s.become]
        users += [c.become_user or "root" for c in checks if c.become]
        return list(dict.fromkeys(users))


@dataclass(frozen=True)
class WavePlan:
    """A batch of hosts; `size` is what the plan asked for (`1`, `25%`, a group)."""

    index: int
    size: str
    hosts: tuple[str, ...]


@dataclass(frozen=True)
class Schedule:
    """The exact schedule of a run: waves, hosts, rendered steps and checks."""

    loaded: LoadedPlan
    env_name: str
    run_id: str
    waves: tuple[WavePlan, ...]
    hosts: Mapping[str, HostPlan]
    notify: tuple[Notify, ...]
    secret_values: frozenset[str] = field(default_factory=frozenset)
    skipped_waves: tuple[str, ...] = ()

    @property
    def plan_name(self) -> str:
        """The plan's name."""
        return self.loaded.plan.name

    @property
    def digest(self) -> str:
        """The plan digest."""
        return self.loaded.digest

    def host_order(self) -> list[str]:
        """Hosts in the order the waves reach them."""
        return [h for wave in self.waves for h in wave.hosts]

    def budget(self) -> int:
        """How many hosts may fail (and be rolled back) before the run aborts."""
        budget = self.loaded.plan.strategy.failure_budget
        total = len(self.hosts)
        if isinstance(budget, Percent):
            return int(budget.value * total // 100)
        return budget


def _target(loaded: LoadedPlan, env_name: str, host_name: str, variables: Variables) -> Target:
    """How to reach one host, with its `ssh:` options and address rendered for that host."""
    env = loaded.plan.environments[env_name]
    base = ("environments", env_name)
    ssh = render_model(loaded, env.ssh, (*base, "ssh"), variables, env_name=env_name, host_name=host_name)
    spec = env.host(host_name)
    # host vars were rendered into `variables` already; only how to reach the host is left
    reach = Host(
        address=spec.address,
        port=spec.port,
        user=spec.user,
        proxy_jump=spec.proxy_jump,
        proxy_command=spec.proxy_command,
    )
    host = render_model(loaded, reach, (*base, "hosts", host_name), variables, env_name=env_name, host_name=host_name)

    def expand(path: str | None) -> str | None:
        return os.path.expanduser(path) if path else None

    if env.connection == "local":
        # A local host runs on this machine, whatever its name.
        return Target(name=host_name, connection="local", address=host.address or "127.0.0.1")
    # Imported here so that plans without ssh hosts never load paramiko.
    from rollout.executors.ssh_config import SshConfigError, read_config, resolve_target

    try:
        config = read_config(ssh.config)
        entry = config.entry(host_name)
    except SshConfigError as exc:
        raise loaded.error((*base, "ssh", "config"), str(exc)) from None
    # The host's own proxy setting replaces the environment's, whichever kind each is.
    proxy = host if host.proxy_jump is not None or host.proxy_command is not None else ssh
    try:
        return resolve_target(
            host_name,
            entry,
            address=host.address,
            port=host.port or ssh.port,
            user=host.user or ssh.user,
            identity_file=expand(ssh.identity_file),
            known_hosts=expand(ssh.known_hosts),
            connect_timeout=ssh.connect_timeout,
            proxy_jump=proxy.proxy_jump,
            proxy_command=proxy.proxy_command,
            lookup=config.entry,
        )
    except SshConfigError as exc:
        raise loaded.error((*base, "hosts", host_name), str(exc)) from None


_Item = TypeVar("_Item", Step, Check, Guard)


def _settled(loaded: LoadedPlan, env: Environment, item: _Item, loc: tuple[str | int, ...]) -> _Item:
    """`item` with its become resolved against the environment's: true means through sudo as `become_user`."""
    on_host = item.runs_on_host if isinstance(item, Check) else item.upload is None
    become = item.become if item.become is not None else env.become and on_host
    if item.become_user is not None and not become:
        raise loaded.error((*loc, "become_user"), "become_user needs 'become: true' (here or on the environment)")
    user = (item.become_user or env.become_user) if become else None
    # Unchanged items stay the same objects: hosts share them, and HTTP checks keep one client per object.
    if bool(item.become) == become and item.become_user == user:
        return item
    return item.model_copy(update={"become": become, "become_user": user})


def _settle_step(loaded: LoadedPlan, env: Environment, step: Step, i: int) -> Step:
    """A step with its become, and its verify checks' become, decided."""
    verify = [_settled(loaded, env, c, ("steps", i, "verify", j)) for j, c in enumerate(step.verify)]
    if any(a is not b for a, b in zip(verify, step.verify, strict=True)):
        step = step.model_copy(update={"verify": verify})
    return _settled(loaded, env, step, ("steps", i))


def _settle_become(
    loaded: LoadedPlan, env: Environment, steps: list[Step], prechecks: list[Check], guards: list[Guard]
) -> tuple[list[Step], list[Check], list[Guard]]:
    """Every step and check of a host with its become decided (theirs, else the environment's)."""
    return (
        [_settle_step(loaded, env, s, i) for i, s in enumerate(steps)],
        [_settled(loaded, env, c, ("prechecks", i)) for i, c in enumerate(prechecks)],
        [_settled(loaded, env, g, ("guards", i)) for i, g in enumerate(guards)],
    )


def _become_password(loaded: LoadedPlan, env_name: str, variables: Variables) -> str | None:
    """The sudo password for one host: only ever the value of a secret variable."""
    template = loaded.plan.environments[env_name].become_password
    match = BECOME_PASSWORD.fullmatch(template) if template is not None else None
    if match is None:
        return None
    loc = ("environments", env_name, "become_password")
    name = match.group(1)
    if name not in variables.values:
        raise loaded.error(loc, f"become_password names the variable '{name}', which is not defined")
    if name not in variables.secrets:
        raise loaded.error(
            loc,
            f"become_password must come from a secret variable: '{name}' is not secret (declare it with secret: true or env:)",
        )
    return str(variables.values[name])


def compute_waves(
    hosts: list[str], groups: Mapping[str, list[str]], sizes: list[int | Percent | str]
) -> tuple[list[WavePlan], list[str]]:
    """Cumulative wave targets -> batches; hosts left after the last wave join it."""
    total = len(hosts)
    done: list[str] = []
    waves: list[WavePlan] = []
    skipped: list[str] = []
    for size in sizes:
        if isinstance(size, str):
            batch = [h for h in groups.get(size, []) if h not in done]
        else:
            goal = min(total, size if isinstance(size, int) else size.of(total))
            batch = [h for h in hosts if h not in done][: max(0, goal - len(done))]
        label = str(size)
        if not batch:
            skipped.append(label)
            continue
        done.extend(batch)
        waves.append(WavePlan(index=len(waves) + 1, size=label, hosts=tuple(batch)))
    rest = [h for h in hosts if h not in done]
    if rest:
        if waves:
            last = waves[-1]
            waves[-1] = WavePlan(last.index, f"{last.size} + rest", last.hosts + tuple(rest))
        else:
            waves.append(WavePlan(1, "100%", tuple(rest)))
    return waves, skipped


def prepare_schedule(
    loaded: LoadedPlan,
    env_name: str,
    *,
    overrides: Mapping[str, str] | None = None,
    run_id: str = "dry-run",
    for_validation: bool = False,
    budget: RenderBudget | None = None,
) -> Schedule:
    """Render the plan for every host of `env_name` and cut it into waves.

    Every host's rendering is charged to one `budget` (a fresh one unless given), so a
    plan whose variables expand exponentially fails fast instead of filling memory.
    """
    plan = loaded.plan
    budget = budget if budget is not None else RenderBudget()
    if env_name not in plan.environments:
        known = ", ".join(plan.environments)
        raise UsageError(f"{loaded.shown}: no environment '{env_name}' (the plan defines: {known})")
    check_overrides(loaded, overrides)
    env = plan.environments[env_name]
    hosts: dict[str, HostPlan] = {}
    secrets: set[str] = set()

    def rendered(key: str, items: tuple[object, ...], variables: Variables, host: str | None) -> list[object]:
        return [
            render_model(loaded, item, (key, i), variables, env_name=env_name, host_name=host)  # type: ignore[type-var]
            for i, item in enumerate(items)
        ]

    for host_name in env.hosts:
        variables = host_variables(
            loaded,
            env_name,
            host_name,
            overrides=overrides,
            run_id=run_id,
            for_validation=for_validation,
            budget=budget,
        )
        secrets.update(str(variables.values[name]) for name in variables.secrets if str(variables.values[name]))
        steps, prechecks, guards = _settle_become(
            loaded,
            env,
            rendered("steps", tuple(plan.steps), variables, host_name),  # type: ignore[arg-type]
            rendered("prechecks", tuple(plan.prechecks), variables, host_name),  # type: ignore[arg-type]
            rendered("guards", tuple(plan.guards), variables, host_name),  # type: ignore[arg-type]
        )
        hosts[host_name] = HostPlan(
            name=host_name,
            target=_target(loaded, env_name, host_name, variables),
            prechecks=tuple(prechecks),
            guards=tuple(guards),
            steps=tuple(steps),
            variables=variables,
            parity=tuple(rendered("parity", tuple(plan.parity), variables, host_name)),  # type: ignore[arg-type]
            become_password=_become_password(loaded, env_name, variables),
        )
        check_upload_sources(loaded, hosts[host_name].steps, variables.values, env_name=env_name, host_name=host_name)
    env_vars = host_variables(
        loaded, env_name, None, overrides=overrides, run_id=run_id, for_validation=for_validation, budget=budget
    )
    notify = tuple(rendered("notify", tuple(plan.notify), env_vars, None))
    waves, skipped = compute_waves(list(env.hosts), env.groups(), list(plan.strategy.waves))
    for host in hosts.values():
        for i, guard in enumerate(host.guards):
            if guard.metadata is not None and guard.metadata.baseline is not None:
                raise loaded.error(
                    ("guards", i, "metadata", "baseline"),
                    "a guard cannot compare against a baseline",
                )
    return Schedule(
        loaded=loaded,
        env_name=env_name,
        run_id=run_id,
        waves=tuple(waves),
        hosts=hosts,
        notify=notify,  # type: ignore[arg-type]
        secret_values=frozenset(secrets),
        skipped_waves=tuple(skipped),
    )


def validate_environments(loaded: LoadedPlan, overrides: Mapping[str, str] | None = None) -> list[PlanError]:
    """Prepare every environment; return each environment's first problem (none when valid)."""
    try:
        check_overrides(loaded, overrides)
    except PlanError as exc:
        return [exc]
    problems: list[PlanError] = []
    budget = RenderBudget()
    for env_name in loaded.plan.environments:
        try:
            prepare_schedule(loaded, env_name, overrides=overrides, for_validation=True, budget=budget)
        except PlanError as exc:
            problems.append(exc)
    return problems
