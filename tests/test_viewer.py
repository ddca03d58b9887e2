"""`ns-viewer --load-config <run>/config.yml` serves our model on CPU, bound to 127.0.0.1 only.

A minimal client speaks the websocket protocol of viser 0.2.7 (nerfstudio 1.1.5's viewer) as its browser client does:

- every frame the server sends is a msgpack *array* of messages (viser's ``client_api_version=1``); each message is
  a msgpack map holding the dataclass fields of a ``viser._messages`` class plus ``"type"`` (the class name), with
  bytes as msgpack bin;
- the client sends one msgpack map per frame. There is no handshake or version message: viser counts a client as
  connected, and nerfstudio starts its render thread for it, on the client's first ``ViewerCameraMessage``
  (T_world_camera as ``wxyz``/``position`` in OpenCV convention, nerfstudio units x10, vertical ``fov`` in radians,
  ``aspect`` = W/H, plus ``look_at``/``up_direction``);
- nerfstudio answers with a ``BackgroundImageMessage``: ``media_type``, ``rgb_bytes`` (JPEG by default) and an
  optional ``depth_bytes`` PNG.

The camera copies a training view: nerfstudio broadcasts one frustum per training camera (``CameraFrustumMessage``
with ``fov``/``aspect``, then ``SetOrientationMessage``/``SetPositionMessage`` with the same ``name``) once the scene
is initialised, so waiting for a frustum also waits until the viewer is ready to render.
"""

from __future__ import annotations

import asyncio
import io
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import psutil
import pytest
from PIL import Image
from websockets.asyncio.client import ClientConnection, connect

START_TIMEOUT_S = 120.0  # ns-viewer: imports, checkpoint load, viser server up
FRAME_TIMEOUT_S = 60.0  # websocket connect -> first rendered frame
MIN_RENDER_SIDE = 30  # nerfstudio's smallest preview render height


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else "<no log>"


def _listeners(pid: int) -> list[tuple[str, int]]:
    """(ip, port) of every listening TCP socket of the process and its descendants."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    found = []
    for proc in procs:
        try:
            conns = proc.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found += [(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return found


def _wait_for_listener(proc: subprocess.Popen, port: int, log: Path) -> list[tuple[str, int]]:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ns-viewer exited with code {proc.returncode}:\n{_tail(log)}")
        listeners = _listeners(proc.pid)
        if any(p == port for _, p in listeners):
            return listeners
        time.sleep(0.5)
    pytest.fail(f"ns-viewer did not listen on port {port} within {START_TIMEOUT_S:.0f} s:\n{_tail(log)}")


def _stop(proc: subprocess.Popen) -> None:
    """Terminate the viewer's whole process group (it runs in its own session)."""
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue


# ----------------------------------------------------------------------------- minimal viser client
def _camera_message(frustum: dict[str, Any]) -> dict[str, Any]:
    """A browser's ViewerCameraMessage for the pose and intrinsics of a training-camera frustum."""
    w, x, y, z = (float(v) for v in frustum["wxyz"])
    # Columns of R_world_camera (OpenCV: x right, y down, z forward).
    rot = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )
    position = np.asarray(frustum["position"], dtype=np.float64)
    aspect = float(frustum["aspect"])
    # nerfstudio gives frustums the horizontal fov (2 atan(cx / fx)); the viewer camera's fov is vertical.
    vertical_fov = 2 * math.atan(math.tan(float(frustum["fov"]) / 2) / aspect)
    return {
        "type": "ViewerCameraMessage",
        "wxyz": [w, x, y, z],
        "position": position.tolist(),
        "fov": vertical_fov,
        "aspect": aspect,
        "look_at": (position + rot[:, 2]).tolist(),
        "up_direction": (-rot[:, 1]).tolist(),
    }


async def _receive(ws: ClientConnection, deadline: float) -> list[dict[str, Any]]:
    remaining = deadline - asyncio.get_running_loop().time()
    if remaining <= 0:
        raise TimeoutError
    raw = await asyncio.wait_for(ws.recv(decode=False), timeout=remaining)
    batch = msgpack.unpackb(raw, raw=False)
    return batch if isinstance(batch, list) else [batch]


async def _connect(url: str, deadline: float) -> ClientConnection:
    loop = asyncio.get_running_loop()
    while True:
        try:
            return await connect(url, proxy=None, max_size=None, open_timeout=10)
        except OSError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.5)


async def _fetch_frame(url: str) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """Connect, aim the camera along a training view, return (BackgroundImageMessage, frustum, message types seen)."""
    deadline = asyncio.get_running_loop().time() + FRAME_TIMEOUT_S
    seen: list[str] = []
    frustums: dict[str, dict[str, Any]] = {}
    async with await _connect(url, deadline) as ws:
        frustum = None
        while frustum is None:
            for message in await _receive(ws, deadline):
                seen.append(message["type"])
                name = message.get("name", "")
                if message["type"] == "CameraFrustumMessage":
                    frustums[name] = {"fov": message["fov"], "aspect": message["aspect"]}
                elif message["type"] in ("SetOrientationMessage", "SetPositionMessage") and name in frustums:
                    frustums[name].update({k: message[k] for k in ("wxyz", "position") if k in message})
            complete = sorted(n for n, f in frustums.items() if {"wxyz", "position"} <= f.keys())
            if complete:
                frustum = frustums[complete[0]]
        await ws.send(msgpack.packb(_camera_message(frustum), use_bin_type=True))
        while True:
            for message in await _receive(ws, deadline):
                seen.append(message["type"])
                if message["type"] == "BackgroundImageMessage":
                    return message, frustum, seen


# ----------------------------------------------------------------------------- the test
def test_ns_viewer_serves_a_frame_on_localhost(stylised_run: Path, tmp_path: Path) -> None:
    ns_viewer = Path(sys.executable).with_name("ns-viewer")
    assert ns_viewer.exists(), f"{ns_viewer} missing: is nerfstudio installed in this venv?"
    port = _free_port()
    log = tmp_path / "ns-viewer.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    cmd = [str(ns_viewer), "--load-config", str(stylised_run),
           "--viewer.websocket-host", "127.0.0.1", "--viewer.websocket-port", str(port)]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)  # fmt: skip
    try:
        listeners = _wait_for_listener(proc, port, log)
        # Bound to loopback only: never nerfstudio's default 0.0.0.0 (nor "::").
        assert ("127.0.0.1", port) in listeners, listeners
        assert all(ip == "127.0.0.1" for ip, _ in listeners), f"ns-viewer listens beyond loopback: {listeners}"

        try:
            image_message, frustum, seen = asyncio.run(_fetch_frame(f"ws://127.0.0.1:{port}"))
        except TimeoutError:
            pytest.fail(f"no rendered frame within {FRAME_TIMEOUT_S:.0f} s:\n{_tail(log)}")
        assert proc.poll() is None, f"ns-viewer died while rendering:\n{_tail(log)}"
    finally:
        _stop(proc)

    assert image_message["media_type"] in ("image/jpeg", "image/png")
    rgb = np.asarray(Image.open(io.BytesIO(image_message["rgb_bytes"])).convert("RGB"), dtype=np.float32)
    height, width, _ = rgb.shape
    assert min(height, width) >= MIN_RENDER_SIDE, rgb.shape
    assert width / height == pytest.approx(frustum["aspect"], rel=0.1), (rgb.shape, frustum["aspect"])
    # A real render of the textured scene, not a constant background (or black) frame.
    assert rgb.std() > 4.0, f"flat frame: std {rgb.std():.2f}, mean {rgb.mean(axis=(0, 1))}"
    assert rgb.std(axis=(0, 1)).max() > 4.0
