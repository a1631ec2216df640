"""Thin transports: each renders the chat core's events for one kind of client."""
