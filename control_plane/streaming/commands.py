"""`visionguard stream SOURCE --stream-id ID`: a video source through the gateway's tracker."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from control_plane.settings import cli_settings

app = typer.Typer()
console = Console(soft_wrap=True)


@app.command("stream")
def stream(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(
        help="A video file, an rtsp:// or http(s):// URL, a webcam (/dev/video0) or a folder "
             "of images.")],
    stream_id: Annotated[str, typer.Option("--stream-id", help="The gateway's stream id.")],
    gateway: Annotated[Optional[str], typer.Option(
        help="Gateway URL; default VG_GATEWAY_URL, else http://VG_HOST:VG_GATEWAY_PORT.")] = None,
    fps: Annotated[Optional[float], typer.Option(
        min=0.001, help="Frame rate; default the container's (a folder of images: 30).")] = None,
    read_rate: Annotated[float, typer.Option(
        min=0.001, help="Read at this multiple of the frame rate (1: as a camera delivers; a "
                        "live source is never read faster than it sends).")] = 1.0,
    max_frames: Annotated[Optional[int], typer.Option(
        min=1, help="Stop after reading this many frames.")] = None,
    max_in_flight: Annotated[Optional[int], typer.Option(
        min=1, help="Frames sent and not yet answered, at most; a frame due while all are "
                    "busy is dropped. Default VG_STREAM_MAX_IN_FLIGHT (2).")] = None,
    out_video: Annotated[Optional[Path], typer.Option(
        help="Write the frames sent, annotated, as an MP4.")] = None,
    out_events: Annotated[Optional[Path], typer.Option(
        help="Write one JSON line per frame sent: its tracks, counts and events.")] = None,
    conf: Annotated[Optional[float], typer.Option(
        min=0.0, max=1.0, help="Detection threshold (the gateway's default: 0.1).")] = None,
    max_det: Annotated[Optional[int], typer.Option(min=1, help="Detections per frame.")] = None,
    classes: Annotated[Optional[str], typer.Option(
        help="Comma-separated class ids to keep.")] = None,
    reset: Annotated[bool, typer.Option(
        help="Forget the stream on the gateway first (DELETE: its tracks and frame count, "
             "and its zones and lines with them).")] = False,
    reconnect_attempts: Annotated[Optional[int], typer.Option(
        min=0, help="Reopen a lost network source this many times in a row; default "
                    "VG_STREAM_RECONNECT_ATTEMPTS (5).")] = None,
    stall_timeout: Annotated[Optional[float], typer.Option(
        min=0.1, help="Seconds without data before a network source counts as stalled; "
                      "default VG_STREAM_STALL_TIMEOUT_S (10).")] = None,
) -> None:
    """Send a video source's frames to the gateway at the source's frame rate; print what the
    tracker saw. Frames the gateway cannot take in time are dropped and counted."""
    from control_plane.streaming.gateway import GatewayClient
    from control_plane.streaming.outputs import EventsWriter, VideoWriter
    from control_plane.streaming.source import SourceOptions, open_source
    from control_plane.streaming.streamer import Streamer

    settings = cli_settings(ctx)
    settings = replace(
        settings,
        gateway_url_override=gateway or settings.gateway_url_override,
        stream_max_in_flight=max_in_flight or settings.stream_max_in_flight,
        stream_reconnect_attempts=(settings.stream_reconnect_attempts
                                   if reconnect_attempts is None else reconnect_attempts),
        stream_stall_timeout_s=stall_timeout or settings.stream_stall_timeout_s)
    display = StatusLine(console)
    opened = open_source(source, SourceOptions(
        fps=fps, open_timeout_s=settings.stream_open_timeout_s,
        stall_timeout_s=settings.stream_stall_timeout_s,
        reconnect_attempts=settings.stream_reconnect_attempts,
        backoff_s=settings.stream_reconnect_backoff_s,
        backoff_max_s=settings.stream_reconnect_backoff_max_s), display.note)
    outputs: list = []
    try:
        client = GatewayClient(
            settings.gateway_url, stream_id, fps=opened.fps,
            max_in_flight=settings.stream_max_in_flight,
            timeout_s=settings.stream_request_timeout_s, token=settings.gateway_token,
            params={"conf": conf, "max_det": max_det, "classes": classes})
        client.check_ready()
        if reset:
            client.reset()
        if out_events:
            outputs.append(EventsWriter(out_events, opened.fps))
        if out_video:
            outputs.append(VideoWriter(out_video, opened.fps))
        streamer = Streamer(opened, client, outputs,
                            max_in_flight=settings.stream_max_in_flight, read_rate=read_rate,
                            max_frames=max_frames,
                            gateway_grace_s=settings.stream_request_timeout_s,
                            on_progress=display.update, notify=display.note)
    except BaseException:
        for output in outputs:
            output.close(commit=False)
        opened.close()
        raise
    console.print(f"streaming {opened.description} to {client.url} as {stream_id!r}, "
                  f"at most {settings.stream_max_in_flight} frames in flight")
    with display:
        stats = streamer.run()
    console.print(summary_table(stats, stream_id, out_video, out_events))


class StatusLine:
    """A live status line on a terminal; a log line every `interval_s` otherwise."""

    def __init__(self, console: Console, interval_s: float = 2.0) -> None:
        self.console = console
        self.interval_s = interval_s
        self._live = Live(console=console, refresh_per_second=4, transient=True) \
            if console.is_terminal else None
        self._last = 0.0

    def __enter__(self) -> StatusLine:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.stop()

    def update(self, stats) -> None:
        now = time.monotonic()
        line = (f"read {stats.read}  sent {stats.sent}  answered {stats.answered}  "
                f"dropped {stats.dropped}  failed {stats.failed}  in flight {stats.in_flight}  "
                f"{stats.answered_fps:.1f} frames/s  tracks {len(stats.track_ids)}  "
                f"events {stats.events}")
        if self._live is not None:
            self._live.update(Text(line))
        elif now - self._last >= self.interval_s:
            self._last = now
            self.console.print(line, highlight=False)

    def note(self, message: str) -> None:
        self.console.print(f"[yellow]{message}[/]")


def summary_table(stats, stream_id: str, out_video: Path | None,
                  out_events: Path | None) -> Table:
    table = Table(title=f"stream {stream_id}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    mean_ms = stats.latency_s / stats.answered * 1000 if stats.answered else 0.0
    errors = ", ".join(f"{code}: {n}" for code, n in sorted(stats.errors.items()))
    rows = [
        ("source", f"{stats.source} ({stats.fps:g} frames/s)"),
        ("ended by", stats.ended_by),
        ("frames read", str(stats.read)),
        ("sent", str(stats.sent)),
        ("answered", f"{stats.answered} (mean {mean_ms:.0f} ms)"),
        ("failed", f"{stats.failed} ({errors})" if errors else str(stats.failed)),
        ("dropped (gateway busy)", str(stats.dropped)),
        ("damaged packets skipped", str(stats.corrupt)),
        ("reconnects", str(stats.reconnects)),
        ("confirmed track ids", str(len(stats.track_ids))),
        ("events", str(stats.events)),
        ("elapsed", f"{stats.elapsed_s:.1f} s ({stats.answered_fps:.1f} answered frames/s)"),
    ]
    rows += [("video", str(out_video))] if out_video else []
    rows += [("events file", str(out_events))] if out_events else []
    for row in rows:
        table.add_row(*row)
    return table
