"""Bulk preprocessing on Ray Data."""
