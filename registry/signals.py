"""Signals the registry sends after commit, so that apps above it react without the registry
importing them (dependencies point one way: brokers -> verification -> registry)."""

from django.dispatch import Signal

# Sent on commit when a pool enters ``submitted``: verification queues a run.
# Arguments: pool_id, request_id.
pool_submitted = Signal()

# Sent on commit after any lifecycle transition of a center or pool.
# Arguments: object_type, object_id, from_status, to_status, reason.
status_changed = Signal()
