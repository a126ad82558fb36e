"""Prognosis: recurrence-free survival from a survival head on each method's encoder."""

from pemma.tasks.prognosis import task  # noqa: F401
