"""arq worker processes: settings, the wake-up worker, and the thin job functions."""
