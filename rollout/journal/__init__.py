"""The run journal: write-ahead, append-only, hash-chained JSON Lines.

The journal is the source of truth for what a run did: every event is one line whose
``prev`` is the sha256 of the previous line's bytes; line 1 chains to a genesis hash
derived from the run id and the plan digest, which the first event (``run.start``)
carries, so the chain can be re-verified from the run directory alone.

What the chain can and cannot prove:

- an edited, inserted, removed or reordered line anywhere before the last one, and a
  truncated last line, are detected and named by their 1-based line number;
- an edited line N is named as line N when line N+2 still chains to line N+1;
- removed *last* lines and an edited last line cannot be seen in the chain: they are
  caught by an `Anchor`, a head (line number and hash) kept outside the journal. The
  writer keeps one in the ``head`` file beside the journal, rewritten after every fsync
  and marked closed by `Journal.close`; the report, the status notifications and the
  run's last terminal line carry others, and `verify_journal` checks every anchor it is
  given and names the one that disagrees.

One concern per module:

- `format`: the line's keys and encoding, the genesis hash, events to and from dicts;
- `reader`: reading and checking the chain, setting a torn last line aside;
- `anchors`: the head file and other heads kept outside the journal;
- `verify`: the verdict on whether a journal can be trusted;
- `writer`: `Journal`, the sink that appends events and keeps the head file.

The package depends only on the standard library and the foundations `rollout.errors`,
`rollout.atomic` and `rollout.event`: it is on the CLI start-up path, and the commands
that only read journals (timeline, verify, runs) must start fast. It never rewrites or
drops a complete line and never uses a torn one.
"""

from __future__ import annotations

from rollout.event import Event
from rollout.journal.anchors import HEAD_FILE, Anchor, head_path, parse_head, read_head_file
from rollout.journal.format import (
    EVENT_FIELDS,
    JOURNAL_KEYS,
    RUN_END,
    RUN_START,
    Record,
    event_from_dict,
    event_to_dict,
    genesis_hash,
)
from rollout.journal.reader import JournalReading, final_run_end, read_journal
from rollout.journal.verify import Verification, verify_journal
from rollout.journal.writer import Journal

__all__ = [
    "EVENT_FIELDS",
    "HEAD_FILE",
    "JOURNAL_KEYS",
    "RUN_END",
    "RUN_START",
    "Anchor",
    "Event",
    "Journal",
    "JournalReading",
    "Record",
    "Verification",
    "event_from_dict",
    "event_to_dict",
    "final_run_end",
    "genesis_hash",
    "head_path",
    "parse_head",
    "read_head_file",
    "read_journal",
    "verify_journal",
]
