"""A real Redis server for tests, from the Debian package scripts/test-tools installs."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis


@contextmanager
def redis_server(folder: Path, *, appendonly: bool = False) -> Iterator[str]:
    """Start redis-server on a free loopback port with its files in `folder`; its URL until the block ends.
    `appendonly`: fsync every write to the append-only file, as a cluster's job store runs."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed: scripts/test-tools installs it "
                    "(apt-get install -y --no-install-recommends redis-server)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    durability = ["--appendonly", "yes", "--appendfsync", "always"] if appendonly else ["--appendonly", "no"]
    log = (folder / "redis.log").open("w")
    process = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", *durability,
                                "--dir", str(folder)], stdout=log, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not start: {(folder / 'redis.log').read_text()}")
                time.sleep(0.02)
        client.close()
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
