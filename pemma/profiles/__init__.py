"""Profiles: sizes and budgets only, never code paths."""
