"""Running the whole stack on one machine: the embedded server, the launcher behind
``make run``, the worker supervisor and process-group helpers.

Submodules are imported by name (``from shared.stack.X import ...``); this package
imports none of them itself, so importing one never loads the others.
"""

__all__ = [
    "embedded",
    "launcher",
    "procs",
    "supervise",
]
