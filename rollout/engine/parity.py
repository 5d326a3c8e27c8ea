"""Gathering parity facts: each fact's value on every host of one environment, read-only.

It must never change anything: a fact is a read-only command, an HTTP GET, or a document
read and hashed. A fact that cannot be gathered on a host is recorded with why (never a
value), and gathering goes on with the next. Hosts are asked concurrently, at most the
plan's `strategy.concurrency` at once (as pre-checks are); every ask has the fact's
timeout, and an abort ends the waits at once: HTTP probes are cut short and commands in
flight are cancelled.

Two callers: the run (the engine's pool, runner and executors: prechecks.py journals the
result as `parity.facts`) and `rollout parity` (`gather_environment`, with its own).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from rollout.checks import json_path_get
from rollout.checks.parity import FactReading
from rollout.engine.prepare import HostPlan, Schedule
from rollout.engine.probe import CheckRunner
from rollout.engine.processes import command_env
from rollout.errors import RolloutError
from rollout.executors import open_executor
from rollout.executors.base import Executor
from rollout.model import DEFAULT_CONCURRENCY, DocumentSource
from rollout.model.hosts import ParityFact, ParityHttp

POLL = 0.05  # how soon a wait for host workers notices an abort
SLACK = 5.0  # beyond the sum of a host's fact timeouts and its connect timeout

Answer = tuple[str | None, str | None]  # (value, None) or (None, why there is none)
RunAll = Callable[[Callable[[HostPlan], None], Iterable[HostPlan]], None]


class FactGatherer:
    """Asks one environment's hosts for the plan's parity facts; one per gathering."""

    def __init__(
        self,
        schedule: Schedule,
        runner: CheckRunner,
        executor: Callable[[str], Executor],
        abort: threading.Event,
    ) -> None:
        self.schedule = schedule
        self.runner = runner
        self.executor = executor
        self.abort = abort
        self._answers: dict[str, dict[str, Answer]] = {}
        self._lock = threading.Lock()

    def gather(self, run_all: RunAll) -> dict[str, FactReading]:
        """Every fact on every host (through `run_all`, a bounded pool): fact name -> reading."""
        hosts = [h for h in self.schedule.hosts.values() if any(f.source != "declared" for f in h.parity)]
        run_all(self.gather_host, hosts)
        return self.readings()

    def gather_host(self, host: HostPlan) -> None:
        """Ask one host every gathered fact, one after the other; keep each answer."""
        for fact in host.parity:
            if fact.source == "declared":
                continue
            answer = (None, "interrupted before it was gathered") if self.abort.is_set() else self._ask(host, fact)
            with self._lock:
                self._answers.setdefault(fact.name, {})[host.name] = answer

    def note_unanswered(self, host: HostPlan, why: str) -> None:
        """A host that did not finish in time: every fact it did not answer gets `why`."""
        with self._lock:
            for fact in host.parity:
                if fact.source != "declared":
                    self._answers.setdefault(fact.name, {}).setdefault(host.name, (None, why))

    def readings(self) -> dict[str, FactReading]:
        """Fact name -> its reading on this environment, hosts in plan order."""
        env = self.schedule.loaded.plan.environments[self.schedule.env_name]
        out: dict[str, FactReading] = {}
        for index, plan_fact in enumerate(self.schedule.loaded.plan.parity):
            values: dict[str, str] = {}
            errors: dict[str, str] = {}
            expected: dict[str, str] = {}
            with self._lock:
                answers = dict(self._answers.get(plan_fact.name, {}))
            for host in self.schedule.hosts.values():
                fact = host.parity[index]
                if fact.template is not None:
                    expected[host.name] = fact.template
                if fact.source == "declared":
                    value, why = _declared(env.facts, fact.name, self.schedule.env_name)
                else:
                    value, why = answers.get(host.name, (None, "not gathered"))
                if value is not None:
                    values[host.name] = value
                else:
                    errors[host.name] = why or "no value"
            out[plan_fact.name] = FactReading(
                values, errors, mode=plan_fact.mode, template=plan_fact.template, expected=expected
            )
        return out

    # --- asking --------------------------------------------------------------------

    def _interrupted(self) -> bool:
        return self.abort.is_set() or self.runner.stop.is_set()

    def _ask(self, host: HostPlan, fact: ParityFact) -> Answer:
        try:
            if fact.command is not None:
                return self._command(host, fact.command, fact.timeout)
            if fact.http is not None:
                return self._http(fact, fact.http)
            assert fact.metadata is not None
            return self._metadata(host, fact, fact.metadata)
        except RolloutError as exc:  # an executor, a document, a connection: the host has no value
            return None, str(exc)

    def _command(self, host: HostPlan, command: str, timeout: float) -> Answer:
        result = self.executor(host.name).run(command, timeout=timeout, env=self.runner.env)
        if result.timed_out:
            return None, f"`{command}` timed out after {timeout:g}s"
        if result.cancelled:
            return None, f"`{command}` was interrupted"
        if result.exit_code != 0:
            tail = result.tail("stderr", 3).strip() or result.tail("stdout", 3).strip()
            return None, f"`{command}` exited {result.exit_code}" + (f": {tail}" if tail else "")
        return result.stdout.strip(), None

    def _get(self, key: object, url: str, headers: Mapping[str, str], timeout: float) -> tuple[str | None, str]:
        """(None, body) or (why, "") for one GET; any 2xx is an answer."""
        obs = self.runner.prober(key).probe(url, headers=headers, timeout=timeout, interrupted=self._interrupted)
        if obs.error is not None:
            return f"{url}: {obs.error}", ""
        if obs.status is None or not 200 <= obs.status < 300:
            return f"{url}: status {obs.status}", ""
        return None, obs.body

    def _http(self, fact: ParityFact, spec: ParityHttp) -> Answer:
        why, body = self._get(self._plan_fact(fact), spec.url, spec.headers, fact.timeout)
        if why is not None:
            return None, why
        if spec.json_path is None:
            return body.strip(), None
        try:
            value = json_path_get(json.loads(body), spec.json_path)
        except ValueError:
            return None, f"{spec.url}: the body is not JSON"
        except KeyError:
            return None, f"{spec.url}: {spec.json_path} is missing"
        return (value if isinstance(value, str) else json.dumps(value, sort_keys=True)), None

    def _metadata(self, host: HostPlan, fact: ParityFact, source: DocumentSource) -> Answer:
        from rollout.checks import metadata as md

        if source.url is not None:
            why, body = self._get(self._plan_fact(fact), source.url, {}, fact.timeout)
            if why is not None:
                return None, why
            data, name = body.encode("utf-8"), source.url
        else:
            data, name = self.runner.fetch(source, self.executor(host.name), fact.timeout)
        # the same canonical hash read-back compares: equal data, whatever its formatting
        return "sha256:" + md.document_digest(md.parse_document(data, fmt=source.format, name=name)), None

    def _plan_fact(self, fact: ParityFact) -> ParityFact:
        """The plan's own (unrendered) fact: one kept HTTP client serves it on every host."""
        return next(f for f in self.schedule.loaded.plan.parity if f.name == fact.name)


def _declared(facts: Mapping[str, object], name: str, env_name: str) -> Answer:
    if name not in facts:
        return None, f"not declared: environment '{env_name}' has no `facts: {{{name}: ...}}`"
    return str(facts[name]), None


def host_deadline(host: HostPlan) -> float:
    """How long one host may take to answer every fact: their timeouts, connecting, and some slack."""
    return sum(f.timeout for f in host.parity if f.source != "declared") + host.target.connect_timeout + SLACK


def gather_environment(
    schedule: Schedule,
    *,
    abort: threading.Event | None = None,
) -> dict[str, FactReading]:
    """The plan's parity facts on every host of the schedule's environment (for `rollout parity`).

    Hosts are asked at most `strategy.concurrency` at once; the whole gathering ends by the
    slowest host's deadline, and at once on `abort` (commands in flight are cancelled). A
    host that did not answer in time has an error for every fact it left unanswered.
    """
    abort = abort or threading.Event()
    runner = CheckRunner(
        schedule.loaded.path.parent.resolve(), stop=abort, abort=abort, env=command_env(schedule.run_id)
    )
    executors: dict[str, Executor] = {}
    lock = threading.Lock()

    def executor(name: str) -> Executor:
        with lock:
            if name not in executors:
                executors[name] = open_executor(schedule.hosts[name].target)
            return executors[name]

    gatherer = FactGatherer(schedule, runner, executor, abort)
    try:
        gatherer.gather(lambda fn, hosts: _bounded(gatherer, fn, list(hosts), abort, schedule, executors, lock))
    finally:
        with lock:
            opened = list(executors.values())
        for ex in opened:
            with contextlib.suppress(Exception):  # closing is best effort; the answers are in
                ex.close()
        runner.close()
    return gatherer.readings()


def _bounded(
    gatherer: FactGatherer,
    fn: Callable[[HostPlan], None],
    hosts: list[HostPlan],
    abort: threading.Event,
    schedule: Schedule,
    executors: Mapping[str, Executor],
    lock: threading.Lock,
) -> None:
    """fn over hosts in a bounded pool; on abort or past the deadline, cancel what is in flight."""
    if not hosts:
        return
    size = schedule.loaded.plan.strategy.concurrency or DEFAULT_CONCURRENCY
    waves = -(-len(hosts) // size)  # hosts queue behind each other: the deadline grows with the queue
    deadline = time.monotonic() + max(host_deadline(h) for h in hosts) * waves
    pool = ThreadPoolExecutor(max_workers=max(1, min(size, len(hosts))), thread_name_prefix="parity")
    futures: dict[Future[None], HostPlan] = {pool.submit(fn, h): h for h in hosts}
    pending = set(futures)
    try:
        while pending and not abort.is_set() and time.monotonic() < deadline:
            _, pending = wait(pending, timeout=POLL, return_when=FIRST_COMPLETED)
    finally:
        late = not abort.is_set() and bool(pending)
        if pending:
            abort.set()  # nothing new starts; probes in flight end; commands are cancelled below
            with lock:
                opened = list(executors.values())
            for ex in opened:
                ex.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
    why = "did not answer before the gathering's deadline" if late else "interrupted before it was gathered"
    for fut in pending:
        gatherer.note_unanswered(futures[fut], why)
    for fut, host in futures.items():
        if fut.done() and not fut.cancelled() and fut.exception() is not None:
            gatherer.note_unanswered(host, f"internal error: {fut.exception()}")
