"""Receiving uploads and storing them as batches: multipart bodies, CSV pieces and the
streaming pipe, column conversion, exact line errors, JSON bodies, the store step.

Submodules are imported by name (``from shared.ingest.X import ...``); this package
imports none of them itself, so importing one never loads the others.
"""

__all__ = [
    "buffers",
    "columns",
    "csv_header",
    "csv_reader",
    "line_errors",
    "multipart_parser",
    "pipe",
    "segments",
    "store",
]
