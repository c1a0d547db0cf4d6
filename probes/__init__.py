"""Probe engines."""
