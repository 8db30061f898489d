"""Chaos tests: real worker processes killed, cut off, skewed and restarted under load."""
