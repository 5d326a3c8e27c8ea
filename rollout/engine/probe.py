"""Asking a check's question on a host, with its timeout, retries and interval.

Commands go through the host's executor; HTTP and TCP are asked from the orchestrator;
metadata documents come from a local file, a file or command on the host, or a URL.
The verdict itself always comes from the pure functions in rollout.checks.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rollout.checks import (
    HttpObservation,
    Verdict,
    evaluate_command,
    evaluate_http,
    evaluate_tcp,
)
from rollout.errors import ExecutorError, MetadataError, RolloutError
from rollout.executors.base import Executor
from rollout.model import Check, DocumentSource, MetadataCheck, Percent


class CheckRunner:
    """Runs checks for the engine; `plan_dir` anchors relative local file paths."""

    def __init__(
        self, plan_dir: Path, *, stop: threading.Event | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        self.plan_dir = plan_dir
        self.stop = stop or threading.Event()
        # Given to every check command: the run's marker, so `recover` can find what a dead run left running.
        self.env = dict(env or {})

    def run(self, check: Check, executor: Executor, *, retries: int | None = None) -> Verdict:
        """The check with its retries: the first passing attempt wins, else the last failure."""
        attempts = 1 + (check.retries if retries is None else retries)
        verdict = self.once(check, executor)
        for attempt in range(2, attempts + 1):
            if verdict.ok or self.stop.wait(check.interval):
                break
            verdict = self.once(check, executor)
            verdict = Verdict(verdict.ok, verdict.summary, {**verdict.observed, "attempt": attempt})
        return verdict

    def once(self, check: Check, executor: Executor) -> Verdict:
        """One attempt; any failure to ask becomes a failing verdict, never an exception."""
        try:
            if check.command is not None:
                result = executor.run(check.command.run, timeout=check.timeout, env=self.env)
                return evaluate_command(check.command, result)
            if check.http is not None:
                from rollout.checks.http import http_probe

                h = check.http
                obs = http_probe(h.url, method=h.method, headers=h.headers, timeout=check.timeout)
                return evaluate_http(h, obs)
            if check.tcp is not None:
                from rollout.checks.http import tcp_probe

                try:
                    port = int(check.tcp.port)
                except ValueError:
                    return Verdict(False, f"tcp port {check.tcp.port!r} is not a number")
                return evaluate_tcp(tcp_probe(check.tcp.host, port, timeout=check.timeout))
            assert check.metadata is not None
            return self._metadata(check.metadata, executor, check.timeout)
        except ExecutorError as exc:
            return Verdict(False, str(exc), {"error": str(exc)})
        except RolloutError as exc:
            return Verdict(False, str(exc), {"error": str(exc)})

    # --- metadata ----------------------------------------------------------------

    def fetch(self, source: DocumentSource, executor: Executor, timeout: float) -> tuple[bytes, str]:
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
            result = executor.run(source.command, timeout=timeout, env=self.env)
            name = f"{executor.target.name}: `{source.command}`"
            if not result.ok:
                raise MetadataError(f"{name} exited {result.exit_code}: {result.tail('stderr', 3)}")
            return result.stdout.encode("utf-8"), name
        assert source.url is not None
        from rollout.checks.http import http_probe

        obs: HttpObservation = http_probe(source.url, timeout=timeout)
        if obs.error is not None or obs.status != 200:
            raise MetadataError(f"{source.url}: {obs.error or f'status {obs.status}'}")
        return obs.body.encode("utf-8"), source.url

    def _document(self, source: DocumentSource, executor: Executor, timeout: float) -> tuple[Any, str]:
        from rollout.checks import metadata as md

        data, name = self.fetch(source, executor, timeout)
        return md.parse_document(data, fmt=source.format, name=name), name

    def _metadata(self, spec: MetadataCheck, executor: Executor, timeout: float) -> Verdict:
        from rollout.checks import metadata as md

        doc, name = self._document(spec.source, executor, timeout)
        if spec.equals is not None:
            intended, intended_name = self._document(spec.equals, executor, timeout)
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
            baseline, _ = self._document(spec.baseline, executor, timeout)
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
