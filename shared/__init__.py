"""Code the API and the workers both load, grouped by concern.

Loose modules hold what every part needs (``config``, ``contracts``, ``errors``,
``logs``, ``metrics``, ``registry``, ``storage``, ``keys``, ``queue``); each
subpackage is one concern: ``ingest`` (uploads to batches), ``data`` (selection
and assembly), ``runs`` (run state), ``models`` (artifacts and scoring),
``webhooks`` (callbacks), ``stack`` (running it locally) and ``client`` (the
HTTP client, CLI and demo, which neither server process imports).
"""
