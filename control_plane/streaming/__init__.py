"""`visionguard stream`: video from a file, a network URL, a webcam or a folder of images, sent
frame by frame to the gateway's stream endpoint, with an annotated MP4 and a JSON-lines record
of tracks and events as outputs.

A wing beside releases, drift and logs: a client of the gateway over HTTP
(`POST /v1/streams/{id}/frames`, `GET /v1/streams/{id}/zones`), so it imports only
`control_plane.errors` and `control_plane.settings` from the control plane, and nothing of the
gateway's application (app, service, clients, settings); the gateway's shared modules
(letterbox, telemetry ...) would be allowed, as for every wing.

    source.py     PyAV sources: open, decode, reconnect with backoff, stall detection
    gateway.py    the HTTP client: bounded frames in flight, a frame's answer or error
    overlays.py   zones and lines as the gateway describes them, read defensively
    outputs.py    the annotated MP4 (supervision + PyAV) and the JSON lines, written atomically
    streamer.py   the loop: pace at the source's rate, send or drop, write in frame order
    commands.py   the CLI command, its live status line and summary table
"""
