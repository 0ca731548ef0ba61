"""Tuning: a hyperparameter search whose trials are tasks on the training queue.

Submodules are imported by name; this package imports none of them itself.
"""

__all__ = [
    "search",
    "space",
    "study",
    "tasks",
    "trial",
]
