"""resolve_weights: local paths, the HF cache layout, one-line errors, and no network behind the user's back."""

from __future__ import annotations

import socket
from pathlib import Path

import huggingface_hub
import pytest
import torch

from styleme3d_ns.core.errors import UserInputError
from styleme3d_ns.guidance.weights import MissingWeightsError, resolve_weights, select_device_dtype

HINT = "pass --pipeline.model.weights PATH"


@pytest.fixture
def fake_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An HF hub cache in tmp holding repo acme/tiny at revision abc123 with one file, selected via HF_HUB_CACHE."""
    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123" / "model.safetensors").write_bytes(b"weights")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # huggingface_hub reads HF_HUB_OFFLINE once at import (tests/conftest.py sets it for the whole session)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return cache


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record (and refuse) every attempt to open a connection or resolve a host; the test asserts it stays empty."""
    attempts: list[str] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(repr(args[:2]))
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def test_existing_local_file_is_returned_as_is(tmp_path: Path) -> None:
    f = tmp_path / "model.pth"
    f.write_bytes(b"x")
    assert resolve_weights("Model", f, hint=HINT) == f
    assert resolve_weights("Model", str(f), hint=HINT) == f


def test_local_directory_with_filename_returns_the_file(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(b"x")
    assert resolve_weights("Model", tmp_path, filename="w.bin", hint=HINT) == tmp_path / "w.bin"
    with pytest.raises(MissingWeightsError, match="w2.bin"):
        resolve_weights("Model", tmp_path, filename="w2.bin", hint=HINT)


def test_repo_id_is_found_in_hf_cache_layout(fake_hf_cache: Path, no_network: list[str]) -> None:
    snapshot = fake_hf_cache / "models--acme--tiny" / "snapshots" / "abc123"
    assert (
        resolve_weights("Tiny", "acme/tiny", filename="model.safetensors", hint=HINT) == snapshot / "model.safetensors"
    )
    assert resolve_weights("Tiny", "acme/tiny", hint=HINT) == snapshot
    assert no_network == []


def test_missing_local_path_raises_one_line_error_naming_path_and_hint(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "vgg19.pth"
    with pytest.raises(MissingWeightsError) as info:
        resolve_weights("VGG-19", missing, hint=HINT)
    msg = str(info.value)
    assert "\n" not in msg and str(missing) in msg and "VGG-19" in msg and HINT in msg
    assert isinstance(info.value, UserInputError)  # every CLI boundary turns it into one line


def test_missing_repo_raises_one_line_error_naming_repo_cache_dir_and_download_command(
    fake_hf_cache: Path, no_network: list[str]
) -> None:
    with pytest.raises(MissingWeightsError) as info:
        resolve_weights("CSD ViT-L", "acme/absent", filename="model.pt", hint=HINT)
    msg = str(info.value)
    assert "\n" not in msg
    assert "acme/absent" in msg and str(fake_hf_cache / "models--acme--absent") in msg
    assert "huggingface-cli download acme/absent" in msg and HINT in msg
    assert no_network == []


def test_hf_hub_offline_blocks_download_even_when_allowed(
    fake_hf_cache: Path, no_network: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls: list[str] = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: calls.append("file"))
    with pytest.raises(MissingWeightsError, match="HF_HUB_OFFLINE=1"):
        resolve_weights("Tiny", "acme/absent", filename="model.pt", hint=HINT, allow_download=True)
    with pytest.raises(MissingWeightsError):
        resolve_weights("Tiny", "acme/absent", hint=HINT, allow_download=True)
    assert calls == [] and no_network == []


def test_without_allow_download_nothing_is_downloaded_even_online(
    fake_hf_cache: Path, no_network: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: calls.append("file"))
    with pytest.raises(MissingWeightsError, match="local files only"):
        resolve_weights("Tiny", "acme/absent", filename="model.pt", hint=HINT)
    assert calls == [] and no_network == []


def test_allow_download_online_calls_the_hub_downloader(
    fake_hf_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    downloaded = tmp_path / "downloaded.pt"
    downloaded.write_bytes(b"x")
    calls: list[tuple[str, str]] = []

    def fake_download(repo_id: str, filename: str, **kwargs: object) -> str:
        calls.append((repo_id, filename))
        return str(downloaded)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    path = resolve_weights("Tiny", "acme/absent", filename="model.pt", hint=HINT, allow_download=True)
    assert path == downloaded and calls == [("acme/absent", "model.pt")]


def test_none_path_raises_with_hint() -> None:
    with pytest.raises(MissingWeightsError, match="no path"):
        resolve_weights("Model", None, hint=HINT)


def test_cpu_always_gets_float32() -> None:
    assert select_device_dtype("cpu") == (torch.device("cpu"), torch.float32)
    assert select_device_dtype("cpu", half=True)[1] == torch.float32
