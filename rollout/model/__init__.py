"""The plan as frozen data: Plan, Environment, Step, Check and their parts.

Pure data with validation, no I/O: the loader (planfile) turns YAML into these, the
engine reads them. Strings may hold `{{ var }}` templates; they are rendered per host by
the planfile package, never here.

One concern a module: `base` (the base model and shared field types), `checks` (checks
and guards), `steps` (steps and the wave strategy), `hosts` (environments and hosts) and
`plan` (the plan, notify sinks, freeze windows). Import from `rollout.model`.
"""

from rollout.model.base import (
    NAME_PATTERN,
    BakeDuration,
    CountOrPercent,
    Delay,
    Duration,
    Model,
    Name,
    ProbeDuration,
    SecretVar,
    Vars,
    VarValue,
    WaveSize,
)
from rollout.model.checks import (
    CHECK_KINDS,
    Bound,
    Check,
    CommandCheck,
    DocumentSource,
    Guard,
    HttpCheck,
    MetadataCheck,
    Reference,
    TcpCheck,
)
from rollout.model.hosts import Environment, Host, ParityFact, SshOptions
from rollout.model.plan import FileSink, FreezeWindow, Notify, Plan, WebhookSink
from rollout.model.steps import AUTOMATIC_ROLLBACK, DEFAULT_CONCURRENCY, Step, Strategy, Upload

__all__ = [
    "AUTOMATIC_ROLLBACK",
    "CHECK_KINDS",
    "DEFAULT_CONCURRENCY",
    "NAME_PATTERN",
    "BakeDuration",
    "Bound",
    "Check",
    "CommandCheck",
    "CountOrPercent",
    "Delay",
    "DocumentSource",
    "Duration",
    "Environment",
    "FileSink",
    "FreezeWindow",
    "Guard",
    "Host",
    "HttpCheck",
    "MetadataCheck",
    "Model",
    "Name",
    "Notify",
    "ParityFact",
    "Plan",
    "ProbeDuration",
    "Reference",
    "SecretVar",
    "SshOptions",
    "Step",
    "Strategy",
    "TcpCheck",
    "Upload",
    "VarValue",
    "Vars",
    "WaveSize",
    "WebhookSink",
]
