"""Runnable examples that ship with rollout; not part of the installed package."""
