"""Tools for developing and testing Tether (not used by the server)."""
