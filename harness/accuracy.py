"""Word error rates against references, and transcripts from a running service: what the accuracy script and
the accuracy tests both measure with.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, dataclass
from pathlib import Path

import requests
from whisper.normalizers import EnglishTextNormalizer

from harness.speech_corpus import Clip

DEFAULT_CACHE = Path.home() / ".cache" / "whisper-service" / "accuracy"
REQUEST_TIMEOUT = 3600
normalize = EnglishTextNormalizer()


@dataclass(frozen=True)
class Errors:
    """Word-level edit operations turning a reference into a hypothesis."""

    substitutions: int
    deletions: int
    insertions: int
    reference_words: int

    @property
    def wer(self) -> float:
        return (self.substitutions + self.deletions + self.insertions) / max(self.reference_words, 1)

    def __add__(self, other: Errors) -> Errors:
        return Errors(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


def word_errors(reference: str, hypothesis: str) -> Errors:
    """Levenshtein alignment of normalised words; ties prefer substitutions, as jiwer's counts do."""
    ref, hyp = normalize(reference).split(), normalize(hypothesis).split()
    # each cell: (cost, substitutions, deletions, insertions)
    previous = [(j, 0, 0, j) for j in range(len(hyp) + 1)]
    for i in range(1, len(ref) + 1):
        current = [(i, 0, i, 0)]
        for j in range(1, len(hyp) + 1):
            diagonal = previous[j - 1]
            if ref[i - 1] == hyp[j - 1]:
                best = diagonal
            else:
                up, left = previous[j], current[j - 1]
                best = min(
                    (diagonal[0] + 1, diagonal[1] + 1, diagonal[2], diagonal[3]),
                    (up[0] + 1, up[1], up[2] + 1, up[3]),
                    (left[0] + 1, left[1], left[2], left[3] + 1),
                )
            current.append(best)
        previous = current
    _, substitutions, deletions, insertions = previous[-1]
    return Errors(substitutions, deletions, insertions, len(ref))


def service_transcripts(url: str, clips: list[Clip], **form: str) -> dict[str, str]:
    """Every clip posted at once to POST /transcribe."""

    def post(clip: Clip) -> str:
        with clip.path.open("rb") as audio:
            response = requests.post(
                f"{url}/transcribe",
                files={"file": (clip.path.name, audio)},
                data={"language": "en", **form},
                timeout=REQUEST_TIMEOUT,
            )
        response.raise_for_status()
        return response.json()["transcription"]

    with ThreadPoolExecutor(len(clips)) as pool:
        return dict(zip((c.name for c in clips), pool.map(post, clips), strict=True))
