"""Snapshot compilation into immutable runtime tables."""
