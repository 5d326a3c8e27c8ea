"""Writing a journal: the event sink that appends to the chain, and the head file beside it.

`Journal` creates a journal (0600, in a 0700 directory) or reopens one for recover
(verifying it and setting a torn last line aside first), then appends one line per
event, each chaining to the one before. Appends from many threads form one chain;
`sync` fsyncs once for every line written before it (group commit). After every fsync
the durable head is recorded in the ``head`` file (see `anchors`), and `close` seals it
as closed, so that cutting the journal's tail is seen.

It never rewrites or drops a complete line, and never appends again after a failed
write or fsync: the journal refuses every later append.

Depends on the standard library, `rollout.atomic` (the head file's durable last write,
directory fsyncs), `rollout.errors`, `rollout.event` (the `Event` it appends) and the
journal's `format`, `reader` and `anchors` modules.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from rollout.atomic import fsync_dir, write_atomic
from rollout.errors import JournalError, Refused
from rollout.event import Event
from rollout.journal.anchors import head_path
from rollout.journal.format import (
    RUN_START,
    Record,
    encode_line,
    event_type_problem,
    genesis_hash,
    sha256_hex,
    utc_ms,
)
from rollout.journal.reader import JournalReading, read_journal, read_no_follow, set_aside_torn

_HEAD_RECORD: Final = 256  # the head file's fixed size while a run goes on: one in-place write


class Journal:
    """An open journal that appends events to the chain; build it with create() or reopen()."""

    def __init__(
        self,
        *,
        path: Path,
        fd: int,
        run_id: str,
        plan_digest: str,
        seq: int,
        head: str,
        mono_base: float,
        clock: Callable[[], float],
        wall: Callable[[], float],
        recovered: JournalReading | None,
    ) -> None:
        self.path = path
        self.run_id = run_id
        self.plan_digest = plan_digest
        self.genesis = genesis_hash(run_id, plan_digest)
        self.recovered = recovered
        self._fd: int | None = fd
        self._seq = seq
        self._head = head
        self._mono_base = mono_base
        self._mono_last = mono_base
        self._clock = clock
        self._wall = wall
        self._t0 = clock()
        self._failed: str | None = None
        self._synced_seq = seq
        # Writers hold _lock only; a syncing thread takes _sync_lock, then _lock briefly,
        # so one fsync covers every line written before it (group commit).
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._head_fd: int | None = None

    @classmethod
    def create(
        cls,
        path: Path | str,
        *,
        run_id: str,
        plan_digest: str,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> Journal:
        """Create a new journal file (0600, in a 0700 directory); refuse if it exists."""
        path = Path(path)
        try:
            new_dirs = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if new_dirs:
                os.chmod(path.parent, 0o700)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(path, flags, 0o600)
        except FileExistsError as exc:
            raise JournalError(f"journal {path} already exists; a run's journal is only continued by recover") from exc
        except OSError as exc:
            raise JournalError(f"cannot create journal {path}: {exc}") from exc
        try:
            os.fchmod(fd, 0o600)
            fsync_dir(path.parent)
            for directory in new_dirs:
                if directory.parent.exists():
                    fsync_dir(directory.parent)
        except OSError as exc:
            os.close(fd)
            raise JournalError(f"cannot make journal {path} durable: {exc}") from exc
        return cls(
            path=path,
            fd=fd,
            run_id=run_id,
            plan_digest=plan_digest,
            seq=0,
            head=genesis_hash(run_id, plan_digest),
            mono_base=0.0,
            clock=clock,
            wall=wall,
            recovered=None,
        )

    @classmethod
    def reopen(
        cls,
        path: Path | str,
        *,
        run_id: str,
        plan_digest: str,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> Journal:
        """Verify an existing journal, set aside a torn last line, and continue its chain."""
        path = Path(path)
        reading = read_journal(path)
        if reading.run_id is not None and reading.run_id != run_id:
            raise JournalError(f"journal {path} belongs to run {reading.run_id}, not {run_id}")
        if reading.plan_digest is not None and reading.plan_digest != plan_digest:
            raise Refused(
                f"plan digest differs: run {run_id} was started with plan {reading.plan_digest}, "
                f"this plan is {plan_digest}; refusing to continue its journal"
            )
        if reading.torn_offset is not None:
            set_aside_torn(path, read_no_follow(path)[reading.torn_offset :], reading.torn_offset)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise JournalError(f"cannot open journal {path} for appending: {exc}") from exc
        records = reading.records
        journal = cls(
            path=path,
            fd=fd,
            run_id=run_id,
            plan_digest=plan_digest,
            seq=len(records),
            head=reading.head or genesis_hash(run_id, plan_digest),
            mono_base=records[-1].mono if records else 0.0,
            clock=clock,
            wall=wall,
            recovered=reading,
        )
        # a run continued by recover is open again: the head file must stop saying "closed"
        journal._write_head(journal.seq, journal.head, closed=False)
        return journal

    @property
    def head(self) -> str:
        """Hash of the last line written (the genesis hash while the journal is empty)."""
        return self._head

    @property
    def seq(self) -> int:
        """Sequence number of the last line written (0 while empty)."""
        return self._seq

    @property
    def closed(self) -> bool:
        """Whether close() was called."""
        return self._fd is None

    def append(self, event: Event, *, sync: bool = False) -> Record:
        """Write one event as the next line; with sync, it is on disk when this returns."""
        with self._lock:
            fd = self._usable_fd()
            seq = self._seq + 1
            if seq == 1:
                self._check_run_start(event)
            mono = round(self._mono_base + (self._clock() - self._t0), 3)
            mono = max(mono, self._mono_last)
            obj: dict[str, Any] = {
                "seq": seq,
                "ts": utc_ms(self._wall()),
                "mono": mono,
                "kind": event.kind,
                "wave": event.wave,
                "host": event.host,
                "step": event.step,
                "outcome": event.outcome,
                "data": event.data,
                "prev": self._head,
            }
            problem = event_type_problem(obj)
            if problem:
                raise JournalError(f"event {event.kind!r} cannot be journaled: {problem}")
            payload = encode_line(obj)
            digest = sha256_hex(payload)
            try:
                written = os.write(fd, payload + b"\n")
            except OSError as exc:
                raise self._fail(f"cannot write journal line {seq}: {exc}") from exc
            if written != len(payload) + 1:
                raise self._fail(f"short write of journal line {seq} ({written} of {len(payload) + 1} bytes)")
            prev, self._seq, self._head, self._mono_last = self._head, seq, digest, mono
        if sync:
            self._sync_through(seq)
        data = json.loads(payload)["data"]
        return Record(
            seq=seq,
            ts=obj["ts"],
            mono=mono,
            kind=event.kind,
            wave=event.wave,
            host=event.host,
            step=event.step,
            outcome=event.outcome,
            data=data,
            prev=prev,
            hash=digest,
            line_no=seq,
        )

    def sync(self) -> None:
        """Make every line written so far durable."""
        self._sync_through(self._seq)

    def close(self) -> None:
        """Make every line durable, seal the head file, close the file; safe to call twice."""
        if self._fd is not None and self._failed is None:
            # a failure is recorded in the journal object; the head file keeps the last durable line
            with contextlib.suppress(JournalError):
                self._sync_through(self._seq, closing=True)
        with self._sync_lock, self._lock:
            self._close_head_fd()
            if self._fd is not None:
                fd, self._fd = self._fd, None
                os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _usable_fd(self) -> int:
        if self._failed is not None:
            raise JournalError(f"journal {self.path} refuses appends after: {self._failed}")
        if self._fd is None:
            raise JournalError(f"journal {self.path} is closed")
        return self._fd

    def _check_run_start(self, event: Event) -> None:
        if (
            event.kind != RUN_START
            or event.data.get("run_id") != self.run_id
            or event.data.get("plan_digest") != self.plan_digest
        ):
            raise JournalError(
                f"the first event must be {RUN_START} with data run_id={self.run_id!r} and "
                f"plan_digest={self.plan_digest!r}, got {event.kind!r}"
            )

    def _fail(self, message: str) -> JournalError:
        self._failed = message
        return JournalError(f"journal {self.path}: {message}")

    def _sync_through(self, seq: int, *, closing: bool = False) -> None:
        with self._sync_lock:
            if self._synced_seq >= seq and not closing:
                return  # an fsync that started after this line was written covered it
            with self._lock:
                fd = self._usable_fd()
                target, head = self._seq, self._head
            try:
                os.fsync(fd)
            except OSError as exc:
                with self._lock:
                    raise self._fail(f"cannot fsync journal up to line {target}: {exc}") from exc
            self._synced_seq = target
            self._write_head(target, head, closed=closing)

    def _write_head(self, seq: int, head: str, *, closed: bool) -> None:
        """Record the durable head outside the journal, so that cutting its tail is seen.

        While the run goes on, the head file is overwritten in place (one fixed-size
        pwrite, no fsync): a temporary file and a rename per synced event made every
        journal fsync commit that metadata too, which doubled the cost of a step. An older
        head after a crash is still true (the journal may only be longer), and the line it
        names is already fsynced. The closing head is written atomically and durably.
        """
        if seq == 0:
            return
        doc = {"run_id": self.run_id, "seq": seq, "hash": head, "closed": closed}
        text = json.dumps(doc, separators=(",", ":"))
        try:
            if closed:
                self._close_head_fd()
                write_atomic(head_path(self.path), text + "\n", sync_dir=False)
                return
            if self._head_fd is None:
                self._head_fd = os.open(
                    head_path(self.path), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
                )
                os.ftruncate(self._head_fd, _HEAD_RECORD)
            record = text.ljust(_HEAD_RECORD - 1).encode() + b"\n"
            if os.pwrite(self._head_fd, record, 0) != len(record):
                raise OSError(errno.ENOSPC, "short write of the head file")
        except OSError as exc:
            with self._lock:
                raise self._fail(f"cannot write the head file after line {seq}: {exc}") from exc

    def _close_head_fd(self) -> None:
        fd, self._head_fd = self._head_fd, None
        if fd is not None:
            os.close(fd)
