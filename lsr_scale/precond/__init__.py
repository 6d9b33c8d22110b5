"""Preconditioners (PLACEHOLDER)."""
