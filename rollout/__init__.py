"""rollout: an upgrade-safety rollout orchestrator."""

__version__ = "0.1.0"
