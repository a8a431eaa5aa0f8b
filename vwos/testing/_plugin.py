"""The pytest plugin of the vwos test kit (registered through the ``pytest11`` entry point)."""
