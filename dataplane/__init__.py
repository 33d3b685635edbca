"""FLUX Gateway data-plane node (trio)."""
