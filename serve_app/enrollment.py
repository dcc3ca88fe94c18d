"""Enrolled speakers: a voice embedded once from a few clips, kept in the job store, named in later requests.

`POST /v1/speakers` sends the clips (data URLs, as known_speaker_references[] takes them) to the diarization
deployment, which returns one embedding for them all (the normalised mean of the clips' embeddings) and
the identity of the model that made it. A later request names the speaker in known_speaker_names[]
without a reference, and the diarization replica matches that embedding as it would a clip's; one
enrolled with another model than the replica's is refused there (enroll again after a model change).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import numpy as np

from core.audio import SAMPLE_RATE_HZ
from core.errors import BadRequest, ServiceError
from core.transcript import SpeakerReference
from serve_app import references
from serve_app.jobs.store import JobStore, Speaker

MAX_CLIPS = 8
NAMES_PARAM = "known_speaker_names"
_NAME = re.compile(r"[^\s/](.{0,62}[^\s/])?")


class UnknownSpeaker(ServiceError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "speaker_not_found"


def check_name(name: str) -> str:
    name = name.strip() if isinstance(name, str) else ""
    if not _NAME.fullmatch(name) or name.startswith("SPEAKER_"):
        raise BadRequest("name must be 1-64 characters, without '/' or surrounding spaces, and not start with "
                         "SPEAKER_ (how unnamed speakers are labelled)", param="name")
    return name


async def enroll(store: JobStore, diarization: Any, body: Any, *, timeout_s: float,
                 memory_limit_mib: int) -> Speaker:
    """Enroll (or replace) the speaker a `POST /v1/speakers` JSON body describes:
    {"name": ..., "references": [data URL, ...]} with 1-MAX_CLIPS clips of 2-10 s."""
    if diarization is None:
        raise BadRequest("speaker diarization is not enabled on this server, so speakers cannot be enrolled")
    if not isinstance(body, dict) or set(body) - {"name", "references"}:
        raise BadRequest('send a JSON object {"name": "...", "references": ["data:audio/wav;base64,...", ...]}')
    name = check_name(body.get("name", ""))
    clips = body.get("references")
    if not (isinstance(clips, list) and 1 <= len(clips) <= MAX_CLIPS and all(isinstance(c, str) for c in clips)):
        raise BadRequest(f"references must be a list of 1 to {MAX_CLIPS} data URLs of 2-10 s of {name} alone",
                         param="references")
    decoded = await references.decode([name] * len(clips), clips, timeout_s=timeout_s,
                                      memory_limit_mib=memory_limit_mib)
    audio = [reference.audio for reference in decoded if reference.audio is not None]
    embedded = await diarization.embed.remote(audio)
    metadata = [{"duration_s": round(len(samples) / SAMPLE_RATE_HZ, 3), "embedding_model": embedded["embedding_model"]}
                for samples in audio]
    return await asyncio.to_thread(store.put_speaker, name, embedded["embedding"], metadata)


async def enrolled(store: JobStore, names: list[str]) -> tuple[SpeakerReference, ...]:
    """The enrolled speakers of these names as references (404 naming any not enrolled)."""
    speakers = await asyncio.to_thread(lambda: [store.get_speaker(name) for name in names])
    missing = [name for name, speaker in zip(names, speakers, strict=True) if speaker is None]
    if missing:
        raise UnknownSpeaker(f"no speaker enrolled as {', '.join(map(repr, missing))}; enroll with POST /v1/speakers "
                             "or send known_speaker_references[] with the names", param=NAMES_PARAM)
    return tuple(SpeakerReference(name=speaker.name, embedding=np.asarray(speaker.embedding, dtype=np.float32),
                                  embedding_model=(speaker.clips[0].get("embedding_model") if speaker.clips else None))
                 for speaker in speakers if speaker is not None)


def speaker_card(speaker: Speaker) -> dict[str, Any]:
    """How the API shows an enrolled speaker (its embedding left out: it identifies a person's voice)."""
    return {"object": "speaker", "name": speaker.name, "created_at": int(speaker.created_at),
            "updated_at": int(speaker.updated_at), "clips": speaker.clips,
            "dimension": len(speaker.embedding)}
