"""rollout: an upgrade-safety rollout orchestrator.

The public Python API is `rollout.api` (its names are also reachable here, `rollout.run`,
`rollout.verify`, ..., except `report`, which is the report package); the CLI is a shell over it.

Layers, lowest first. A module imports only from its own layer and the layers before it
(tests/test_layers.py reads this table and checks every import, lazy ones included):

    foundation  errors units event exits atomic statedir template signing http
    model       model
    planfile    planfile
    checks      checks
    executors   executors
    engine      engine
    journal     journal lock runstore
    report      report
    api         api
    cli         cli __main__

The command line talks to the rest only through `rollout.api` and the foundation.
"""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """`rollout.run` and friends: the API's names, imported on first use."""
    import rollout.api

    if name in rollout.api.__all__:
        return getattr(rollout.api, name)
    raise AttributeError(f"module 'rollout' has no attribute {name!r}")
