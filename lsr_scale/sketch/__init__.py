"""Sketching operators (PLACEHOLDER)."""
