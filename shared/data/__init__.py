"""The stored data as a model sees it: the batch registry, data selection (tags, age,
filters), the newest entity record by id, metadata features, and dataset assembly.

Submodules are imported by name (``from shared.data.X import ...``); this package
imports none of them itself, so importing one never loads the others.
"""

__all__ = [
    "assembly",
    "batches",
    "entity_index",
    "feature_matrix",
    "features",
    "filters",
    "selection",
    "summary",
]
