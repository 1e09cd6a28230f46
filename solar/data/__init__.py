"""Data: offline sets (offline.py), readers and decoding."""
