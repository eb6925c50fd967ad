"""Placeholder: filled in by the work on issues 10 and 11."""

COMMANDS: list = []
