"""Asking a check's question on a host, with its timeout, retries and interval.

Commands go through the host's executor; HTTP and TCP are asked from the orchestrator;
metadata documents come from a local file, a file or command on the host, or a URL.
The verdict itself always comes from the pure functions in rollout.checks.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rollout.checks import (
    HttpObservation,
    Verdict,
    evaluate_command,
    evaluate_http,
    evaluate_tcp,
)
from rollout.errors import ExecutorError, MetadataError, RolloutError
from rollout.executors.base import Become, Executor, become_arg
from rollout.model import Check, DocumentSource, MetadataCheck, TcpCheck
from rollout.units import Percent

if TYPE_CHECKING:
    from rollout.checks.http import HttpProber
    from rollout.http.aio import AsyncHttpPool

PROBE_SLICE = 0.1  # how soon a wait between attempts notices an abort


class CheckRunner:
    """Runs checks for the engine; `plan_dir` anchors relative local file paths.

    `stop` ends every probe (the run is over). `abort` ends only the probes of a `run`
    that asks for it (pre-checks: before any change an abort makes them moot). A step's
    verification is left to finish within its timeout, so that an abort caused elsewhere
    never records a healthy host as failed, and guards keep probing while a rollback is
    watched. Each HTTP check keeps one client for all its probes; `close` ends them.
    """

    def __init__(
        self,
        plan_dir: Path,
        *,
        stop: threading.Event | None = None,
        abort: threading.Event | None = None,
        env: Mapping[str, str] | None = None,
        passwords: Mapping[str, str | None] | None = None,
    ) -> None:
        self.plan_dir = plan_dir
        # host -> the login user's sudo password, for checks with become (secret: never logged).
        self._passwords = dict(passwords or {})
        self.stop = stop or threading.Event()
        self.abort = abort or threading.Event()
        # Given to every check command: the run's marker, so `recover` can find what a dead run left running.
        self.env = dict(env or {})
        self._probers: dict[int, tuple[object, HttpProber]] = {}
        self._probers_lock = threading.Lock()

    def run(
        self, check: Check, executor: Executor, *, retries: int | None = None, yield_to_abort: bool = False
    ) -> Verdict:
        """The check with its retries: the first passing attempt wins, else the last failure.

        The wait between attempts always ends at an abort: no retry starts after it (a
        verification's retries must not hold the rollback back). `yield_to_abort` also cuts
        short the attempt in flight (pre-checks); otherwise it finishes within its timeout.
        """
        attempts = 1 + (check.retries if retries is None else retries)
        verdict = self.once(check, executor, interruptible_by_abort=yield_to_abort)
        for attempt in range(2, attempts + 1):
            if verdict.ok or self._wait_interrupted(check.interval, yield_to_abort=True):
                break
            verdict = self.once(check, executor, interruptible_by_abort=yield_to_abort)
            verdict = Verdict(verdict.ok, verdict.summary, {**verdict.observed, "attempt": attempt})
        return verdict

    def _wait_interrupted(self, seconds: float, yield_to_abort: bool) -> bool:
        """Sleep up to `seconds`, waking at once on stop (or abort, when asked); True if woken."""
        deadline = time.monotonic() + seconds
        while not (self.stop.is_set() or (yield_to_abort and self.abort.is_set())):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.stop.wait(min(left, PROBE_SLICE))
        return True

    def prober(self, key: object) -> HttpProber:
        """The HTTP client kept for one check (or document source), built on first use."""
        from rollout.checks.http import HttpProber

        with self._probers_lock:
            entry = self._probers.get(id(key))
            if entry is None or entry[0] is not key:
                entry = (key, HttpProber())  # the key is kept so that its id is not reused
                self._probers[id(key)] = entry
            return entry[1]

    def close(self) -> None:
        """Close every kept HTTP client; safe to call twice."""
        with self._probers_lock:
            probers = [p for _, p in self._probers.values()]
            self._probers.clear()
        for prober in probers:
            prober.close()

    def once(self, check: Check, executor: Executor, *, interruptible_by_abort: bool = False) -> Verdict:
        """One attempt; any failure to ask becomes a failing verdict, never an exception."""
        if interruptible_by_abort:

            def interrupted() -> bool:
                return self.stop.is_set() or self.abort.is_set()
        else:
            interrupted = self.stop.is_set
        try:
            return self._ask(check, executor, interrupted)
        except ExecutorError as exc:
            return Verdict(False, str(exc), {"error": str(exc)})
        except RolloutError as exc:
            return Verdict(False, str(exc), {"error": str(exc)})

    def become(self, check: Check, executor: Executor) -> Become | None:
        """How the check's commands run on the executor's host: through sudo when it says become."""
        if not check.become:
            return None
        return Become(check.become_user or "root", self._passwords.get(executor.target.name))

    def _ask(self, check: Check, executor: Executor, interrupted: Callable[[], bool]) -> Verdict:
        """One attempt of whichever kind the check is; failures to ask raise."""
        if check.command is not None:
            result = executor.run(
                check.command.run, timeout=check.timeout, env=self.env, **become_arg(self.become(check, executor))
            )
            return evaluate_command(check.command, result)
        if check.http is not None:
            h = check.http
            obs = self.prober(h).probe(
                h.url, method=h.method, headers=h.headers, timeout=check.timeout, interrupted=interrupted
            )
            return evaluate_http(h, obs)
        if check.tcp is not None:
            return _tcp(check.tcp, check.timeout)
        assert check.metadata is not None
        return self._metadata(check.metadata, executor, check.timeout, self.become(check, executor))

    @staticmethod
    def on_loop(check: Check) -> bool:
        """True for the checks asked from the orchestrator without blocking (HTTP, TCP): `once_async`."""
        return check.http is not None or check.tcp is not None

    async def once_async(self, check: Check, pool: AsyncHttpPool) -> Verdict:
        """One attempt of an HTTP or TCP check on the caller's event loop and its kept connections."""
        from rollout.checks.http import probe_async, tcp_probe_async

        if check.http is not None:
            h = check.http
            obs = await probe_async(pool, h.url, method=h.method, headers=h.headers, timeout=check.timeout)
            return evaluate_http(h, obs)
        assert check.tcp is not None
        try:
            port = int(check.tcp.port)
        except ValueError:
            return Verdict(False, f"tcp port {check.tcp.port!r} is not a number")
        return evaluate_tcp(await tcp_probe_async(check.tcp.host, port, timeout=check.timeout))

    # --- metadata ----------------------------------------------------------------

    def fetch(
        self, source: DocumentSource, executor: Executor, timeout: float, become: Become | None = None
    ) -> tuple[bytes, str]:
        """The bytes of a document and a name for messages."""
        if source.file is not None:
            path = Path(source.file)
            if not path.is_absolute():
                path = self.plan_dir / path
            path = Path(os.path.normpath(path))
            try:
                return path.read_bytes(), str(path)
            except OSError as exc:
                raise MetadataError(f"{path}: cannot read: {exc.strerror}") from exc
        if source.host_file is not None:
            name = f"{executor.target.name}:{source.host_file}"
            return executor.read_file(source.host_file), name
        if source.command is not None:
            result = executor.run(source.command, timeout=timeout, env=self.env, **become_arg(become))
            name = f"{executor.target.name}: `{source.command}`"
            if not result.ok:
                raise MetadataError(f"{name} exited {result.exit_code}: {result.tail('stderr', 3)}")
            return result.stdout.encode("utf-8"), name
        assert source.url is not None
        obs: HttpObservation = self.prober(source).probe(source.url, timeout=timeout, interrupted=self.stop.is_set)
        if obs.error is not None or obs.status != 200:
            raise MetadataError(f"{source.url}: {obs.error or f'status {obs.status}'}")
        return obs.body.encode("utf-8"), source.url

    def _document(
        self, source: DocumentSource, executor: Executor, timeout: float, become: Become | None = None
    ) -> tuple[Any, str]:
        from rollout.checks import metadata as md

        data, name = self.fetch(source, executor, timeout, become)
        return md.parse_document(data, fmt=source.format, name=name), name

    def _metadata(self, spec: MetadataCheck, executor: Executor, timeout: float, become: Become | None) -> Verdict:
        from rollout.checks import metadata as md

        doc, name = self._document(spec.source, executor, timeout, become)
        if spec.equals is not None:
            intended, intended_name = self._document(spec.equals, executor, timeout, become)
            rb = md.read_back(intended, doc)
            observed: dict[str, Any] = {
                "document": name,
                "intended": intended_name,
                "served_digest": rb.served_digest,
                "intended_digest": rb.intended_digest,
            }
            if not rb.equal:
                observed["diff"] = rb.diff
                return Verdict(
                    False,
                    f"{name} serves {rb.served_digest[:12]}, intended {rb.intended_digest[:12]} ({intended_name})",
                    observed,
                )
            if not _has_validation(spec):
                return Verdict(True, f"read-back matches ({rb.served_digest[:12]})", observed)
        schema = None
        if spec.schema_file is not None:
            schema_doc, _ = self._document(DocumentSource(file=spec.schema_file), executor, timeout)
            schema = schema_doc
        baseline = None
        if spec.baseline is not None:
            baseline, _ = self._document(spec.baseline, executor, timeout, become)
        report = md.validate_document(
            doc,
            name=name,
            schema=schema,
            invariants=md.Invariants(
                unique=tuple(spec.unique),
                references=tuple((r.source, r.target) for r in spec.references),
                non_empty=tuple(spec.non_empty),
                immutable=tuple(spec.immutable),
                bounds=tuple(
                    md.Bound(
                        path=b.path,
                        minimum=b.min,
                        maximum=b.max,
                        exclusive_minimum=b.exclusive_min,
                        one_of=tuple(b.one_of) if b.one_of is not None else None,
                    )
                    for b in spec.bounds
                ),
            ),
            baseline=baseline,
            key=spec.key,
            budget=_budget(md, spec) if baseline is not None else None,
        )
        observed = {"document": name, **report.to_dict()}
        if report.ok:
            return Verdict(True, f"{name}: valid ({', '.join(report.checks)})", observed)
        first = report.shown[0] if report.shown else None
        head = f"{first.path}: {first.message}" if first else "invalid"
        total = len(report.violations)
        more = f" (+{total - 1} more)" if total > 1 else ""
        return Verdict(False, f"{name}: {head}{more}", observed)


def _tcp(spec: TcpCheck, timeout: float) -> Verdict:
    """Connect to the port from the orchestrator."""
    from rollout.checks.http import tcp_probe

    try:
        port = int(spec.port)
    except ValueError:
        return Verdict(False, f"tcp port {spec.port!r} is not a number")
    return evaluate_tcp(tcp_probe(spec.host, port, timeout=timeout))


def _has_validation(spec: MetadataCheck) -> bool:
    return bool(
        spec.schema_file
        or spec.unique
        or spec.references
        or spec.non_empty
        or spec.immutable
        or spec.bounds
        or spec.baseline
    )


def _budget(md: Any, spec: MetadataCheck) -> Any:
    limit = spec.max_changed
    return md.Budget(
        max_changed=limit if isinstance(limit, int) else None,
        max_changed_pct=limit.value if isinstance(limit, Percent) else None,
        allow_added=spec.allow_added,
        allow_removed=spec.allow_removed,
    )
