"""Session fixtures shared by every test folder.

- ``shared_dir``: ../shared beside the repository (read-only reference material and the parity fixture).
- ``random_dam_dir``: a tiny-preset DAM with random weights and a sentencepiece tokenizer trained here, written by
  ``save_pretrained`` in the official folder layout (seconds to build).
- ``trained_dam_dir``: the ci-profile tiny DAM trained on the synthetic benchmark (dam_tools/build_tiny_model.py;
  cached under DAM_CACHE_DIR, so only the first run pays the few minutes of training). DAM_TEST_MODEL_DIR overrides it.
- ``trained_dam``: that model loaded for inference (fp32, CPU, eval), once per test module.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from fake_label_studio import FakeLabelStudio, png_bytes, scene

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    import torch

    # 2-core machines: more threads than cores only thrash.
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    path = ROOT.parent / "shared"
    assert path.is_dir(), f"{path} is missing: tests expect ../shared beside the repository"
    return path


@pytest.fixture(scope="session")
def random_dam_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from dam_model.config import DAMConfig
    from dam_model.modeling import DescribeAnythingModel
    from dam_model.prompt import build_prompt
    from dam_model.synthetic import generate_dataset, iter_region_samples
    from dam_model.tokenizer import load_tokenizer, train_tokenizer

    scenes = generate_dataset(seed=11, n=8)
    texts = [s.caption for s in iter_region_samples(scenes, caption="long")]
    texts += [s.caption for s in iter_region_samples(scenes, caption="short")]
    texts += [build_prompt("<image>\nDescribe the masked region in detail.")] * 4
    tokenizer = load_tokenizer(train_tokenizer(texts, 320, tmp_path_factory.mktemp("tokenizer")))
    torch.manual_seed(0)
    config = DAMConfig.tiny(vocab_size=len(tokenizer))
    model = DescribeAnythingModel.from_config(config, tokenizer=tokenizer)
    out = tmp_path_factory.mktemp("random-dam") / "model"
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def trained_dam_dir() -> Path:
    override = os.environ.get("DAM_TEST_MODEL_DIR")
    if override:
        return Path(override)
    from dam_tools.build_tiny_model import ensure_tiny_model

    return ensure_tiny_model("ci")


@pytest.fixture(scope="module")
def trained_dam(trained_dam_dir: Path):
    from dam_model.modeling import DescribeAnythingModel

    return DescribeAnythingModel.from_pretrained(trained_dam_dir, device="cpu", dtype="float32").eval()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def unused_port() -> int:
    """A port nothing listens on (for "endpoint unreachable" cases)."""
    return free_port()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """URL of a moto S3 server PROCESS on 127.0.0.1 (a real S3 endpoint over HTTP), stopped after the session.
    Tests share it: each one creates its own uniquely named buckets."""
    import socket
    import subprocess
    import sys
    import time

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("moto server exited at start")
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("moto server did not start")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def fake_ls():
    """Factory of fake Label Studio servers (media routes, token refresh), closed after the test."""
    servers: list[FakeLabelStudio] = []

    def start(**kw) -> FakeLabelStudio:
        server = FakeLabelStudio(**kw)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def media_root(tmp_path) -> Path:
    """A LOCAL_FILES_ROOT holding images/img1.png."""
    root = tmp_path / "media"
    (root / "images").mkdir(parents=True)
    (root / "images" / "img1.png").write_bytes(png_bytes(scene()))
    return root
