"""Plan files -> a validated LoadedPlan: bounded reading, includes, the plan digest.

Includes resolve only inside the plan's directory, never through `..`, a symlink out, or
anything but a regular file; each file is read without blocking (a FIFO or a device is
refused, not read) and capped at MAX_PLAN_BYTES.

It must never run anything or touch a target: loading a plan has no side effects.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rollout.errors import PlanError
from rollout.planfile.locations import Loc, Mark, SourceMap, error_at
from rollout.planfile.marked_yaml import parse_marked

if TYPE_CHECKING:
    from rollout.model import Plan

MAX_PLAN_BYTES = 1024 * 1024

#: Largest file an upload step sends (it is held in memory, and hashed into the digest).
MAX_UPLOAD_BYTES = 64 * 1024 * 1024

# Keys an include file may contribute, and how: lists are prepended, mappings merged.
_INCLUDE_LISTS = ("parity", "prechecks", "guards", "steps", "notify", "freeze")
_INCLUDE_MAPS = ("vars", "environments")


def _read_regular_file(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; PlanError otherwise.

    Opened non-blocking and checked with fstat before the first read: a FIFO would block
    the open (or the read) forever, and a device such as /dev/zero never ends.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise PlanError("is a directory, not a plan file")
        if not stat.S_ISREG(info.st_mode):
            raise PlanError(
                f"is {_file_kind(info.st_mode)}, not a regular file: plans are read from regular files only"
            )
        if info.st_size > limit:
            raise PlanError(f"the file is {info.st_size} bytes; plans are capped at {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, 65536):
            size += len(chunk)
            if size > limit:
                raise PlanError(f"the file is more than {limit} bytes; plans are capped at {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _read_plan_text(path: Path, shown: str) -> str:
    try:
        data = _read_regular_file(path, MAX_PLAN_BYTES)
    except PlanError as exc:
        raise PlanError(exc.message, file=shown) from None
    except FileNotFoundError as exc:
        raise PlanError("no such file", file=shown) from exc
    except IsADirectoryError as exc:
        raise PlanError("is a directory, not a plan file", file=shown) from exc
    except OSError as exc:
        raise PlanError(f"cannot read: {exc.strerror}", file=shown) from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PlanError("not valid UTF-8", file=shown, line=line) from exc


@dataclass(frozen=True)
class LoadedPlan:
    """A validated plan with where every key came from, its files and its digest."""

    plan: Plan
    path: Path
    files: dict[str, bytes]
    digest: str
    source: SourceMap

    @property
    def shown(self) -> str:
        """The plan's path as the user gave it."""
        return str(self.path)

    def error(self, loc: Sequence[str | int], message: str) -> PlanError:
        """A PlanError at `loc` in this plan."""
        return error_at(self.source, loc, message, fallback=self.shown)


class _Loader:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.files: dict[str, bytes] = {}
        self.documents: list[tuple[str, Any]] = []
        self.marks: dict[Loc, Mark] = {}

    def load(self, path: Path, shown: str, stack: tuple[Path, ...]) -> tuple[dict[str, Any], dict[Loc, Mark]]:
        text = _read_plan_text(path, shown)
        rel = os.path.relpath(path.resolve(), self.root)
        self.files[rel] = text.encode("utf-8")
        document = parse_marked(text, shown)
        if document is None:
            raise PlanError(
                "the file is empty: a plan needs at least name, environments and steps",
                file=shown,
                line=1,
                column=1,
            )
        data = document.data
        if not isinstance(data, dict):
            mark = document.start
            raise PlanError(
                f"a plan is a mapping of keys (name, environments, steps, ...), not a {type(data).__name__}",
                file=shown,
                line=mark.line,
                column=mark.column,
            )
        self.documents.append((rel, data))
        marks = document.marks
        includes = data.get("includes", [])
        if not isinstance(includes, list):
            raise _fail(marks, ("includes",), "includes is a list of file names", shown)
        merged: dict[str, Any] = {}
        merged_marks: dict[Loc, Mark] = {}
        for i, entry in enumerate(includes):
            inc_path, inc_shown = self._resolve_include(entry, path, marks, (("includes", i)), shown, stack)
            inc_data, inc_marks = self.load(inc_path, inc_shown, (*stack, inc_path.resolve()))
            extra = sorted(set(inc_data) - set(_INCLUDE_LISTS) - set(_INCLUDE_MAPS) - {"includes"})
            if extra:
                raise _fail(
                    inc_marks,
                    (extra[0],),
                    f"an include may only hold {', '.join(_INCLUDE_LISTS + _INCLUDE_MAPS)}; "
                    f"'{extra[0]}' belongs in the main plan",
                    inc_shown,
                )
            _merge_into(merged, merged_marks, inc_data, inc_marks)
        if merged:
            _merge_into(merged, merged_marks, {k: v for k, v in data.items() if k != "includes"}, marks)
            for key in ("includes", "version", "name", "description", "strategy"):
                if key in data:
                    merged[key] = data[key]
                    _copy_marks(marks, merged_marks, (key,), (key,))
            merged_marks.setdefault((), marks.get((), Mark(shown, 1, 1)))
            return merged, merged_marks
        return data, marks

    def add_upload_sources(self, data: dict[str, Any]) -> None:
        """Hash every upload step's src into the digest and keep its bytes with the plan's files.

        An upload's content is part of what the plan changes, so a lock, a run's plan copy and
        `verify` must cover it like an include. A src that cannot be read here (missing, outside
        the plan's directory, too large) is recorded as such and reported, at its line, when the
        plan is validated for an environment; loading itself stays side-effect free and total.
        """
        steps = data.get("steps")
        for step in steps if isinstance(steps, list) else ():
            upload = step.get("upload") if isinstance(step, dict) else None
            src = upload.get("src") if isinstance(upload, dict) else None
            if not isinstance(src, str) or not src or Path(src).is_absolute() or ".." in Path(src).parts:
                continue
            path = self.root / src
            rel = os.path.relpath(path, self.root)
            if rel in self.files:
                continue
            try:
                if not path.resolve().is_relative_to(self.root):
                    continue
                content = _read_regular_file(path, MAX_UPLOAD_BYTES)
            except (OSError, PlanError) as exc:
                self.documents.append((rel, {"upload": "unreadable", "why": type(exc).__name__}))
                continue
            self.files[rel] = content
            self.documents.append((rel, {"upload_sha256": hashlib.sha256(content).hexdigest()}))

    def _resolve_include(
        self,
        entry: Any,
        parent: Path,
        marks: dict[Loc, Mark],
        loc: Loc,
        shown: str,
        stack: tuple[Path, ...],
    ) -> tuple[Path, str]:
        if not isinstance(entry, str) or not entry.strip():
            raise _fail(marks, loc, "an include is a file name relative to the plan", shown)
        rel = Path(entry)
        if rel.is_absolute():
            raise _fail(
                marks,
                loc,
                f"include {entry!r} is absolute: includes must be relative to the plan's directory",
                shown,
            )
        if ".." in rel.parts:
            raise _fail(
                marks,
                loc,
                f"include {entry!r} leaves the plan's directory ('..' is not allowed)",
                shown,
            )
        candidate = parent.parent / rel
        resolved = candidate.resolve()
        if not resolved.is_relative_to(self.root):
            raise _fail(
                marks,
                loc,
                f"include {entry!r} resolves outside the plan's directory (through a symlink)",
                shown,
            )
        try:
            mode = resolved.stat().st_mode
        except OSError:
            mode = None  # missing or unreadable: reading it says which, naming the file
        if mode is not None and not stat.S_ISREG(mode):
            raise _fail(
                marks,
                loc,
                f"include {entry!r} is {_file_kind(mode)}, not a regular file: only regular files are included",
                shown,
            )
        if resolved in stack:
            chain = " -> ".join(os.path.relpath(p, self.root) for p in (*stack, resolved))
            raise _fail(marks, loc, f"include cycle: {chain}", shown)
        return candidate, str(candidate)


def _fail(marks: dict[Loc, Mark], loc: Loc, message: str, shown: str) -> PlanError:
    return error_at(SourceMap(marks), loc, message, fallback=shown)


def _copy_marks(src: dict[Loc, Mark], dst: dict[Loc, Mark], old: Loc, new: Loc) -> None:
    n = len(old)
    for loc, mark in src.items():
        if loc[:n] == old:
            dst[new + loc[n:]] = mark


def _merge_into(
    merged: dict[str, Any],
    merged_marks: dict[Loc, Mark],
    data: dict[str, Any],
    marks: dict[Loc, Mark],
) -> None:
    """Lists are appended in order; mapping keys may not collide."""
    for key, value in data.items():
        if key == "includes":
            continue
        if key in _INCLUDE_LISTS and isinstance(value, list):
            target = merged.setdefault(key, [])
            if not isinstance(target, list):
                continue
            merged_marks.setdefault((key,), marks.get((key,), Mark("?", 1, 1)))
            for i, item in enumerate(value):
                _copy_marks(marks, merged_marks, (key, i), (key, len(target)))
                target.append(item)
        elif key in _INCLUDE_MAPS and isinstance(value, dict):
            target_map = merged.setdefault(key, {})
            merged_marks.setdefault((key,), marks.get((key,), Mark("?", 1, 1)))
            for name, item in value.items():
                if name in target_map:
                    first = merged_marks.get((key, name))
                    raise _fail(
                        marks,
                        (key, name),
                        f"'{key}.{name}' is defined twice (also at {first})",
                        str(marks.get((key, name), "?")),
                    )
                _copy_marks(marks, merged_marks, (key, name), (key, name))
                target_map[name] = item
        else:
            merged[key] = value
            _copy_marks(marks, merged_marks, (key,), (key,))


def plan_digest(documents: Sequence[tuple[str, Any]]) -> str:
    """sha256 over the canonical form of the plan and every include, in load order.

    The main plan's own file name is left out, so a byte-identical copy under another
    name (the one kept in the run directory, say) has the same digest; includes keep
    their relative names, which are part of the plan's meaning.
    """
    canonical = json.dumps(
        [{"file": name if i else "<plan>", "data": data} for i, (name, data) in enumerate(documents)],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def plan_file_digest(path: str | Path) -> str:
    """The digest `load_plan` computes for this plan file, without validating the plan.

    For checking a stored copy against the digest its run recorded: the copy validated
    when the run started, and any edit to it, valid or not, changes the digest.
    Raises PlanError when the file or an include cannot be read or parsed.
    """
    path = Path(path)
    loader = _Loader(path.parent)
    data, _marks = loader.load(path, str(path), (path.resolve(),))
    loader.add_upload_sources(data)
    return plan_digest(loader.documents)


def load_plan(path: str | Path) -> LoadedPlan:
    """Read, parse and validate a plan file (and its includes)."""
    # The model (pydantic) is imported here, not at the top: `plan_file_digest` (verify) needs none of it.
    from pydantic import ValidationError

    from rollout.model import Plan
    from rollout.planfile.validation import translate_validation_error

    path = Path(path)
    shown = str(path)
    loader = _Loader(path.parent)
    data, marks = loader.load(path, shown, (path.resolve(),))
    loader.add_upload_sources(data)
    source = SourceMap(marks)
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        raise translate_validation_error(exc, source, shown) from None
    loaded = LoadedPlan(
        plan=plan,
        path=path,
        files=loader.files,
        digest=plan_digest(loader.documents),
        source=source,
    )
    _check_references(loaded)
    return loaded


def _check_references(loaded: LoadedPlan) -> None:
    """Names that must refer to something that exists: wave groups."""
    plan = loaded.plan
    for i, wave in enumerate(plan.strategy.waves):
        if isinstance(wave, str):
            missing = [name for name, env in plan.environments.items() if wave not in env.groups()]
            if missing:
                raise loaded.error(
                    ("strategy", "waves", i),
                    f"wave group '{wave}' has no hosts in environment '{missing[0]}' "
                    "(give hosts 'groups: [{wave}]')".replace("{wave}", wave),
                )
