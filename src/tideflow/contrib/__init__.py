"""Integrations with frameworks; each subpackage needs its own extra (e.g. ``tideflow[django]``)."""
