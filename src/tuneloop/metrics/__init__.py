"""Metrics: pure tensor functions that measure (accuracy, calibration, correlations), kept apart from
``losses/`` (what is optimised)."""
