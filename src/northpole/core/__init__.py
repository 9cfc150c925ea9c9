"""Shared core used by every part: settings, errors, logging, metrics, auth, clock, HTTP app,
server lifecycle and the SQLite thread."""
