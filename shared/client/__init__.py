"""The client side: the HTTP client, the multipart encoder it uploads with, the ``recsys``
CLI and the demo. Neither the API nor the workers import it.

Submodules are imported by name (``from shared.client.X import ...``); this package
imports none of them itself, so importing one never loads the others.
"""

__all__ = [
    "cli",
    "demo",
    "demo_shop",
    "http",
    "multipart_encoder",
]
