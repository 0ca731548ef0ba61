"""Training runs in Redis: records and status, the lifecycle of state changes, the model lock.

Submodules are imported by name (``from shared.runs.X import ...``); this package
imports none of them itself, so importing one never loads the others.
"""

__all__ = [
    "lifecycle",
    "lock",
    "records",
]
