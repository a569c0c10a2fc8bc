"""The database layer: collections, payloads and filters (never imports numba)."""
