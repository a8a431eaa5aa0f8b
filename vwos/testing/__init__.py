"""The vwos test kit."""
