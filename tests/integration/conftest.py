"""One real Ray Serve app for the whole integration session: the embedded CPU profile, bundled models.

Deployed through the same code path as the README's serve command (serve_config.cpu.yaml validated
by Ray's ServeDeploySchema, then the controller's deploy), once per session because Ray and the
models take tens of seconds to start on two cores.
"""

from __future__ import annotations

import functools
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests import speech

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="package")
def base_url():
    import ray
    from ray import serve

    from serve_app.launch import deploy, init_ray, load_config

    # Workers import test-only deployments (tests/integration/leaky.py) from the checkout.
    init_ray(loopback_only=True, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    config = load_config(ROOT / "serve_config.cpu.yaml")
    config.http_options.port = 8765  # leave 8000 to a service someone may be running by hand
    url = deploy(config, timeout_s=900)
    yield url
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="package")
def client(base_url):
    with httpx.Client(base_url=base_url, timeout=600) as c:
        yield c


@functools.cache
def paragraph() -> tuple[np.ndarray, str]:
    """Synthetic speech with known text (one voice)."""
    return speech.sample_paragraph(), speech.PARAGRAPH


@functools.cache
def paragraph_wav() -> bytes:
    return speech.to_wav_bytes(paragraph()[0])


GERMAN = ("Guten Morgen. Heute ist das Wetter sehr schön, und wir gehen in den Park. Am Nachmittag trinken "
          "wir Kaffee mit unseren Freunden.")


@functools.cache
def german_wav() -> bytes:
    """Synthetic German speech (espeak-ng's de voice), for the multilingual model and translation."""
    return speech.to_wav_bytes(speech.synthesize(GERMAN, "de"))


@functools.cache
def conversation() -> tuple[np.ndarray, list[speech.Turn]]:
    """Three distinct synthetic voices taking turns, with exact turn times."""
    return speech.sample_conversation()


def transcribe(client: httpx.Client, data: bytes, filename: str = "audio.wav", *,
               route: str = "/v1/audio/transcriptions", **fields) -> httpx.Response:
    """POST a multipart form like OpenAI's clients do; list values repeat their field. `route`: the
    jobs route takes the same form."""
    form = {"model": "whisper-1", **{k: (v if isinstance(v, list) else str(v)) for k, v in fields.items()}}
    return client.post(route, data=form, files={"file": (filename, data)})
