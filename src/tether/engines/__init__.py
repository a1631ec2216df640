"""Model engines: each turns a list of chat messages into a stream of text deltas."""
