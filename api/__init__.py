"""The HTTP API: validates requests, stores uploads, enqueues work, serves recommendations."""
