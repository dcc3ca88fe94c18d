"""Does a chunk's decode depend on the company it keeps in a batch? Real recordings, real weights.

    python -m benchmarks.batch_equality [--model bundled/tiny.en] [--repeats 2] [--seed 0]

Every speech chunk of the real test recordings (tests/real_speech.py's layouts, some of its clips alone,
and pyannote's call) is decoded
with word timings three ways by one ASR holder (no Ray): alone, alone again (the decoder's own
run-to-run noise), and shuffled among the chunks of all the other files in batches of `batch_size`, as
chunks of concurrent requests share a batch in the service, or land on another replica. It prints how many
chunks changed their tokens, text or word times between the ways, and the largest word-time change.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass

import numpy as np

from core.chunks import ChunkTask, DecodedChunk, chunk_tasks
from core.transcript import AsrOptions
from deployments.asr import AsrConfig, AsrHolder
from tests.audio_samples import pyannote_sample
from tests.real_speech import LAYOUTS, build, clip


@dataclass
class Difference:
    chunks: int = 0
    tokens: int = 0
    text: int = 0
    words: int = 0
    max_word_shift_s: float = 0.0

    def add(self, a: DecodedChunk, b: DecodedChunk) -> None:
        self.chunks += 1
        self.tokens += a.tokens != b.tokens
        self.text += a.text != b.text
        times_a = [(w.text, w.start_s, w.end_s) for w in a.words]
        times_b = [(w.text, w.start_s, w.end_s) for w in b.words]
        self.words += times_a != times_b
        if [w[0] for w in times_a] == [w[0] for w in times_b]:
            for (_, sa, ea), (_, sb, eb) in zip(times_a, times_b, strict=True):
                self.max_word_shift_s = max(self.max_word_shift_s, abs(sa - sb), abs(ea - eb))

    def line(self, name: str) -> str:
        return (f"{name:34} {self.chunks:6d} {self.tokens:8d} {self.text:6d} {self.words:7d} "
                f"{self.max_word_shift_s * 1000:10.0f}")


def recordings() -> dict[str, np.ndarray]:
    """The joined real recordings, pyannote's call, and each real clip alone (short, one chunk each)."""
    files = {name: np.array(build(name).audio) for name in LAYOUTS}
    files["call"] = pyannote_sample()[0]
    files |= {name: np.array(clip(name).audio) for name in ("jfk", "forever", "reader-0870", "reader-0920")}
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bundled/tiny.en")
    parser.add_argument("--repeats", type=int, default=2, help="shuffled runs, each with another seed")
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    holder = AsrHolder(AsrConfig(model=options.model, cpu_threads=2))
    try:
        tasks: list[ChunkTask] = []
        for audio in recordings().values():
            plan = holder.run(holder.plan, audio, AsrOptions(), options.model)
            tasks += chunk_tasks(plan, audio, word_timestamps=True)
        alone = [holder.run(holder.decode, [task])[0] for task in tasks]
        again = [holder.run(holder.decode, [task])[0] for task in tasks]
        noise, company = Difference(), Difference()
        for a, b in zip(alone, again, strict=True):
            noise.add(a, b)
        for repeat in range(options.repeats):
            order = list(range(len(tasks)))
            random.Random(options.seed + repeat).shuffle(order)
            mixed = holder.run(holder.decode, [tasks[i] for i in order])
            for position, i in enumerate(order):
                company.add(alone[i], mixed[position])
    finally:
        holder.close()
    print(f"\n{options.model}, batch size {holder.config.batch_size}, {len(tasks)} chunks of "
          f"{len(recordings())} real recordings")
    print(f"{'compared':34} {'chunks':>6} {'tokens':>8} {'text':>6} {'words':>7} {'max shift ms':>10}")
    print(noise.line("alone vs alone again (noise)"))
    print(company.line(f"alone vs shuffled batches (x{options.repeats})"))


if __name__ == "__main__":
    main()
