"""The web console under ``/console``: sign in with an API key, see the data, watch runs,
try recommendations. :func:`api.console.views.init_app` registers it."""

__all__ = ["auth", "data", "runs", "sessions", "tryit", "views"]
