"""Importing the training code in a prefork child, off the first run's clock."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def warm_up() -> None:
    """Import what a run needs (LightFM, Parquet) so the first run does not wait for it.

    Runs in a background thread of each prefork child after the fork; it never
    calls LightFM (OpenMP must not start before the fork, and it does not here).
    """
    try:
        import lightfm.lightfm  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:  # the run itself reports a missing library
        log.warning("warm-up import failed", exc_info=True)
