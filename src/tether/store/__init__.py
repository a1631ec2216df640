"""Persistence of sessions, messages and agents."""
