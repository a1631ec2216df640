"""Tether under uvicorn: every use of uvicorn beyond its public `Config` and `Server.run`.

- `config`: the one `uvicorn.Config` (protocol classes, limits, no uvicorn logging), the
  listening socket of `tether serve`, the open-file limit.
- `graceful`: `TetherServer`, uvicorn's `Server` with Tether's own SIGINT/SIGTERM handlers and
  a drain step before uvicorn's shutdown.
- `http`: the h11 protocol with a deadline on request headers (slowloris).
- `websocket`: the WebSocket protocol whose closes never wait for a peer that does not read.

These subclass uvicorn's protocols and use attributes uvicorn does not document, so
pyproject.toml pins uvicorn's minor version and tests/unit/test_serving_fence.py checks, on a
real server and real connections, that every such name is still there: an upgrade that drops one
fails there, by name, instead of somewhere in a shutdown.
"""
