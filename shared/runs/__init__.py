"""Training runs in Redis: records, references, the lifecycle and its end, the lock, the service.

Submodules are imported by name (``from shared.runs.X import ...``); this package
imports none of them itself, so importing one never loads the others.
"""

__all__ = [
    "ending",
    "lifecycle",
    "lock",
    "records",
    "ref",
    "search",
    "service",
    "slots",
    "tuning",
]
