"""The control plane's HTTP API: the Litestar app factory, the mapping of `control_plane.errors`
to JSON responses, /healthz and /metrics.

The top of the service: it imports the wings' routes; no wing imports it.
"""
