"""vwos: the runtime."""
