"""A request through an ASR deployment object called directly (no Serve), the way the ingress's pipeline
calls it: plan once, then each chunk, then the chunks assembled in order."""

from __future__ import annotations

from typing import Any

import numpy as np

from core.chunks import assemble, chunk_tasks
from core.transcript import AsrOptions, AsrResult


async def transcribe_on(replica: Any, audio: np.ndarray, options: AsrOptions) -> AsrResult:
    plan = await replica.plan(audio, options)
    tasks = chunk_tasks(plan, audio, task=options.task, prompt=options.prompt, temperature=options.temperature,
                        word_timestamps=options.word_timestamps)
    decoded = [await replica.decode_chunk(task) for task in tasks]
    return assemble(plan, decoded, word_timestamps=options.word_timestamps)
