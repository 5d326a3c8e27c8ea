"""What changed between a lock file and the plan as it renders now, in words an operator acts on.

Compares two lock documents (`rollout.api.pin.lock_document`): files by digest, variables
by value, hosts by how they are reached, and only when none of those explains it, the
rendered schedule value by value. Never shows a secret: secret variables are compared by
the hashes the documents hold.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

MAX_SHOWN_DIFFERENCES = 8


def what_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two lock documents: files, variables, hosts, else rendered commands.

    A changed file says where; the rendered values it changed say what it did, so they are
    listed too, unless a variable or a host already explains them.
    """
    changes = _files_changed(old.get("plan", {}).get("files", {}), new["plan"]["files"])
    explained = _variables_changed(old.get("variables", {}), new["variables"], old["overrides"], new["overrides"])
    explained += _hosts_changed(old.get("inventory", {}), new["inventory"])
    changes += explained
    if not explained:
        changes += _schedule_changed(old.get("schedule", {}), new["schedule"])
    if not changes and old.get("tool_version") != new["tool_version"]:
        changes = [f"rollout version: {old.get('tool_version')} -> {new['tool_version']} (it renders the plan)"]
    return changes


def _files_changed(old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    out = [
        f"file {name} changed ({old[name][:19]} -> {new[name][:19]})"
        for name in old
        if name in new and old[name] != new[name]
    ]
    out += [f"file {name} is no longer included" for name in old if name not in new]
    out += [f"file {name} is newly included" for name in new if name not in old]
    return out


def _variables_changed(
    old: Mapping[str, Any], new: Mapping[str, Any], old_over: Mapping[str, Any], new_over: Mapping[str, Any]
) -> list[str]:
    out: list[str] = []
    for name in sorted(set(old) | set(new)):
        was, now = old.get(name, "(unset)"), new.get(name, "(unset)")
        if _is_secret(was) or _is_secret(now):
            # only a --var secret is pinned (by its hash); one written in the plan shows as its file
            if old_over.get(name) != new_over.get(name):
                out.append(f"variable {name} (secret): its value changed (not shown)")
        elif was != now:
            out.append(f"variable {name}: {_shown(was)} -> {_shown(now)}")
    return out


def _is_secret(value: Any) -> bool:
    return isinstance(value, Mapping) and bool(value.get("secret"))


def _shown(value: Any) -> str:
    return value if value == "(unset)" else json.dumps(value, ensure_ascii=False)


def _short(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _hosts_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    out = [f"host {name} added" for name in new if name not in old]
    out += [f"host {name} removed" for name in old if name not in new]
    for name in (n for n in new if n in old and old[n] != new[n]):
        fields = sorted(k for k in set(old[name]) | set(new[name]) if old[name].get(k) != new[name].get(k))
        detail = ", ".join(f"{k} {json.dumps(old[name].get(k))} -> {json.dumps(new[name].get(k))}" for k in fields)
        out.append(f"host {name} changed: {detail}")
    return out


def _schedule_changed(old: Any, new: Any) -> list[str]:
    """The first few rendered values that differ, by where they are in the schedule."""
    found: list[str] = []

    def walk(a: Any, b: Any, where: str) -> None:
        if a == b:
            return
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for key in list(a) + [k for k in b if k not in a]:
                walk(a.get(key), b.get(key), f"{where}.{key}" if where else str(key))
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                walk(x, y, f"{where}[{i}]")
        else:
            found.append(f"rendered {where}: {_short(a)} -> {_short(b)}")

    # the plan digest is in the schedule too; a changed file is named above
    walk({**old, "digest": None}, {**new, "digest": None}, "")
    if len(found) > MAX_SHOWN_DIFFERENCES:
        found = [
            *found[:MAX_SHOWN_DIFFERENCES],
            f"... and {len(found) - MAX_SHOWN_DIFFERENCES} more rendered differences",
        ]
    return found
