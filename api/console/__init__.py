"""The web console under ``/console``: sign in with an API key, see the data, watch runs,
try recommendations and similar items, tune, schedule and pin.
:func:`api.console.views.init_app` registers it."""

__all__ = ["auth", "base", "data", "runs", "schedules", "sessions", "tryit", "tuning", "views"]
