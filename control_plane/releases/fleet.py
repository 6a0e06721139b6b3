"""The serving fleet as promotion sees it: every Triton that serves the model repository.

One HTTP client per Triton (model control in explicit mode, readiness with the repository
index's reason, raw inference for parity), and the fan-out: `VG_TRITON_CONTROL_HOSTS` names
them (a headless Service's name resolves to every pod), so a version is loaded and checked on
every Triton before routing moves to it.
"""

from __future__ import annotations

import socket
import time

import numpy as np

from control_plane.settings import Settings


class TritonServer:
    """The calls promotion makes to one Triton (HTTP, model control in explicit mode)."""

    def __init__(self, address: str) -> None:
        import tritonclient.http as httpclient

        self.address = address
        self.client = httpclient.InferenceServerClient(address, network_timeout=300.0,
                                                       connection_timeout=10.0)

    def load(self, model: str) -> None:
        self.client.load_model(model)

    def version_state(self, model: str, version: int) -> tuple[str, str]:
        """(state, reason) from the repository index: READY, UNAVAILABLE (+ why), ..."""
        for entry in self.client.get_model_repository_index():
            if entry.get("name") == model and str(entry.get("version")) == str(version):
                return entry.get("state", ""), entry.get("reason", "")
        return "UNKNOWN", "not in Triton's repository index"

    def wait_ready(self, model: str, version: int, timeout_s: float) -> tuple[bool, str]:
        deadline = time.monotonic() + timeout_s
        state, reason = "UNKNOWN", ""
        while time.monotonic() < deadline:
            try:
                if self.client.is_model_ready(model, str(version)):
                    return True, "READY"
            except Exception as exc:  # noqa: BLE001 - Triton busy loading: try again
                reason = str(exc)
            state, reason = self.version_state(model, version)
            if state == "UNAVAILABLE" and reason:
                return False, f"{state}: {reason}"
            time.sleep(0.25)
        return False, f"not READY after {timeout_s:.0f} s (state {state} {reason})".strip()

    def infer_raw(self, model: str, version: int, rgb: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
        """(detections [K, 6], raw head output [C, N]) of one letterboxed image."""
        import tritonclient.http as httpclient

        images = httpclient.InferInput("images", [1, *rgb.shape], "UINT8")
        images.set_data_from_numpy(rgb[None])
        flag = httpclient.InferInput("return_raw", [1, 1], "BOOL")
        flag.set_data_from_numpy(np.array([[True]]))
        result = self.client.infer(model, [images, flag], model_version=str(version))
        count = int(result.as_numpy("num_detections")[0, 0])
        return result.as_numpy("detections")[0][:count], result.as_numpy("raw")[0]


def triton_addresses(settings: Settings) -> list[str]:
    """Every Triton that serves the repository: `VG_TRITON_CONTROL_HOSTS` (host:port, comma-
    separated; a name with several addresses, such as a headless Service, counts each), else
    the local one. Resolved at each operation, so scaled-out pods are all reached."""
    entries = [e.strip() for e in settings.triton_control_hosts.split(",") if e.strip()]
    if not entries:
        return [f"{settings.host}:{settings.triton_http_port}"]
    addresses: list[str] = []
    for entry in entries:
        host, _, port = entry.rpartition(":")
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        for ip in sorted({info[4][0] for info in infos}):
            address = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
            if address not in addresses:
                addresses.append(address)
    return addresses


class TritonControl:
    """Promotion's view of the serving fleet: every call goes to every Triton."""

    def __init__(self, settings: Settings) -> None:
        self.servers = [TritonServer(a) for a in triton_addresses(settings)]

    def load(self, model: str) -> None:
        for server in self.servers:
            server.load(model)

    def wait_ready(self, model: str, version: int, timeout_s: float) -> tuple[bool, str]:
        for server in self.servers:
            ok, reason = server.wait_ready(model, version, timeout_s)
            if not ok:
                return False, f"{reason} (Triton {server.address})" if len(self.servers) > 1 \
                    else reason
        return True, "READY"
