"""Placeholder package; filled in by its own module work."""
