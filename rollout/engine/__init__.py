"""The engine: prepare (plan -> schedule), apply (waves, guards, budget), rollback, recover.

It never prints: it emits events to sinks.
"""
