"""Who spoke when: speech found by the VAD's network, voices embedded by CAM++, clustered per request.

Every request's speech is cut into overlapping 1.5 s windows; the windows of all requests in a pass are embedded
together on the worker's device; each request's windows are then clustered on their own (average-linkage on cosine
distance, or into the number of speakers the request gave), and each stretch of speech takes the label of the
window centred nearest to it. Known speakers name the clusters whose voices are closest to their references.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import pairwise

import numpy as np
import torch
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.optimize import linear_sum_assignment
from whisper.audio import SAMPLE_RATE

from app.contract import (
    DiarizationOptions,
    ItemError,
    Outcome,
    Reason,
    Segment,
    Transcript,
    VadParameters,
)
from app.worker.speaker_embedding import SpeakerEmbedder
from app.worker.vad import SpeechDetector, speech_spans

log = logging.getLogger(__name__)

WINDOW_SAMPLES = int(1.5 * SAMPLE_RATE)
HOP_SAMPLES = int(0.75 * SAMPLE_RATE)
# labels are decided on this grid: finer than a word, coarse enough to stay cheap for hours of audio
STEP_SAMPLES = SAMPLE_RATE // 10
# windows further apart than this in cosine distance are different speakers (tuned on scripts/bench_diarization)
DISTANCE_THRESHOLD = 0.45
# a known speaker names a cluster only when their voices are at least this similar
NAME_SIMILARITY = 0.3
# speech as the diarizer hears it: short pauses split turns; a lower threshold and less padding than for
# transcription, so quiet word ends count and pauses do not (tuned on scripts/bench_diarization)
SPEECH = VadParameters(threshold=0.35, min_silence_ms=150, speech_pad_ms=40, min_speech_ms=200)


@dataclass(frozen=True)
class SpeakerTurn:
    """One speaker's stretch of speech, in seconds from the start of the request's audio."""

    speaker: str
    start: float
    end: float


def window_starts(start: int, end: int) -> list[int]:
    """Starts of 1.5 s windows over a speech span; a short span gets one window centred on it."""
    if end - start <= WINDOW_SAMPLES:
        return [max(0, (start + end - WINDOW_SAMPLES) // 2)]
    starts = list(range(start, end - WINDOW_SAMPLES + 1, HOP_SAMPLES))
    if starts[-1] + WINDOW_SAMPLES < end:
        starts.append(end - WINDOW_SAMPLES)
    return starts


def cut_windows(waveform: np.ndarray, starts: Sequence[int]) -> torch.Tensor:
    padded = np.zeros(max([len(waveform), *(s + WINDOW_SAMPLES for s in starts)]), dtype=np.float32)
    padded[: len(waveform)] = waveform
    return torch.from_numpy(np.stack([padded[s : s + WINDOW_SAMPLES] for s in starts]))


def cluster(embeddings: np.ndarray, options: DiarizationOptions) -> np.ndarray:
    """Cluster labels 0..k-1 of unit embeddings, k as the options ask or by the distance threshold."""
    if len(embeddings) < 2:
        return np.zeros(len(embeddings), dtype=int)
    tree = linkage(embeddings, method="average", metric="cosine")
    if options.speakers is not None:
        labels = fcluster(tree, t=options.speakers, criterion="maxclust")
    else:
        labels = fcluster(tree, t=DISTANCE_THRESHOLD, criterion="distance")
        found = len(set(labels))
        bounded = min(max(found, options.min_speakers or 1), options.max_speakers or len(embeddings))
        if bounded != found:
            labels = fcluster(tree, t=bounded, criterion="maxclust")
    return np.asarray(labels) - 1


def letter(index: int) -> str:
    """OpenAI's sequential labels: A, B, ..., Z, AA, AB, ..."""
    name = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        name = chr(ord("A") + rest) + name
    return name


def turns_from_windows(
    spans: Sequence[tuple[int, int]], centres: np.ndarray, labels: np.ndarray, names: dict[int, str]
) -> list[SpeakerTurn]:
    """Each 0.1 s step of speech takes the label of the nearest window centre; runs of one label are turns."""
    turns: list[SpeakerTurn] = []
    for start, end in spans:
        steps = np.arange(start, end, STEP_SAMPLES)
        nearest = labels[np.abs(centres[None, :] - (steps + STEP_SAMPLES // 2)[:, None]).argmin(axis=1)]
        bounds = [0, *(np.flatnonzero(np.diff(nearest)) + 1).tolist(), len(steps)]
        for first, last in pairwise(bounds):
            speaker = names[int(nearest[first])]
            begin, finish = steps[first] / SAMPLE_RATE, min(end, steps[last - 1] + STEP_SAMPLES) / SAMPLE_RATE
            # pauses stay pauses: a bridged pause would count as speech where nobody speaks
            if turns and turns[-1].speaker == speaker and begin <= turns[-1].end:
                turns[-1] = SpeakerTurn(speaker, turns[-1].start, finish)
            else:
                turns.append(SpeakerTurn(speaker, begin, finish))
    return turns


class Diarizer:
    """Speaker turns of many requests' waveforms, their windows embedded in one batched pass.

    >>> Diarizer("cuda").turns([(waveform, DiarizationOptions())])
    """

    def __init__(self, device: torch.device | str = "cpu", detector: SpeechDetector | None = None) -> None:
        self.embedder = SpeakerEmbedder(device)
        self.detector = detector or SpeechDetector(device)

    def voice(self, reference: np.ndarray) -> np.ndarray:
        """One embedding for a known speaker's reference clip: the mean of its windows' embeddings."""
        mean = self.embedder(cut_windows(reference, window_starts(0, len(reference)))).mean(dim=0)
        return (mean / mean.norm()).numpy()

    def turns(self, requests: Sequence[tuple[np.ndarray, DiarizationOptions]]) -> list[list[SpeakerTurn]]:
        waveforms = [waveform for waveform, _ in requests]
        probabilities = self.detector.probabilities(waveforms)
        spans = [speech_spans(p, len(w), SPEECH) for p, w in zip(probabilities, waveforms, strict=True)]
        starts = [[s for span in request for s in window_starts(*span)] for request in spans]
        windows = [cut_windows(w, s) for w, s in zip(waveforms, starts, strict=True) if s]
        embeddings = self.embedder(torch.cat(windows)).numpy() if windows else np.zeros((0, 1))
        answers: list[list[SpeakerTurn]] = []
        offset = 0
        for (_, options), request_spans, request_starts in zip(requests, spans, starts, strict=True):
            own = embeddings[offset : offset + len(request_starts)]
            offset += len(request_starts)
            if not request_starts:
                answers.append([])
                continue
            labels = cluster(own, options)
            centres = np.asarray(request_starts) + WINDOW_SAMPLES // 2
            answers.append(turns_from_windows(request_spans, centres, labels, self.names(own, labels, options)))
        return answers

    def names(self, embeddings: np.ndarray, labels: np.ndarray, options: DiarizationOptions) -> dict[int, str]:
        """Known speakers for the clusters nearest their references, letters (by first appearance) for the rest."""
        order = list(dict.fromkeys(labels.tolist()))
        names = {label: letter(index) for index, label in enumerate(order)}
        if not options.known_speakers:
            return names
        centroids = np.stack([embeddings[labels == label].mean(axis=0) for label in order])
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        voices = np.stack([self.voice(np.frombuffer(k.samples, dtype=np.float32)) for k in options.known_speakers])
        similarity = centroids @ voices.T
        for row, column in zip(*linear_sum_assignment(-similarity), strict=True):
            if similarity[row, column] >= NAME_SIMILARITY:
                names[order[row]] = options.known_speakers[column].name
        # a letter never collides with a given name: unnamed clusters keep letters no known speaker uses
        taken = {k.name for k in options.known_speakers}
        letters = (letter(i) for i in range(len(order) + len(taken)) if letter(i) not in taken)
        return {label: name if name in taken else next(letters) for label, name in names.items()}


def speaker_at(turns: Sequence[SpeakerTurn], start: float, end: float) -> str | None:
    """The speaker who overlaps [start, end] the most; the nearest turn's for a stretch no turn overlaps."""
    if not turns:
        return None
    overlaps = [min(end, t.end) - max(start, t.start) for t in turns]
    best = int(np.argmax(overlaps))
    return turns[best].speaker


def with_speakers(segments: Sequence[Segment], turns: Sequence[SpeakerTurn]) -> list[Segment]:
    """Each word takes the speaker it overlaps most; a segment whose words change speaker is split there."""
    labelled: list[Segment] = []
    for segment in segments:
        if not segment.words:
            labelled.append(replace(segment, speaker=speaker_at(turns, segment.start, segment.end)))
            continue
        speakers = [speaker_at(turns, word.start, word.end) for word in segment.words]
        run_starts = [0, *(i for i in range(1, len(speakers)) if speakers[i] != speakers[i - 1])]
        for first, last in pairwise([*run_starts, len(speakers)]):
            words = segment.words[first:last]
            labelled.append(
                replace(
                    segment,
                    start=segment.start if first == 0 else words[0].start,
                    end=segment.end if last == len(speakers) else words[-1].end,
                    text="".join(word.word for word in words),
                    words=words,
                    speaker=speakers[first],
                )
            )
    return labelled


def diarize_outcomes(
    diarizer: Diarizer, items: Sequence[tuple[np.ndarray, DiarizationOptions, Outcome]]
) -> list[Outcome]:
    """Transcripts of requests that asked for speakers, labelled in one batched pass; others pass through.

    A failure is tried again request by request, so it costs only the request that causes it.
    """
    wanted = [i for i, (_, _, outcome) in enumerate(items) if isinstance(outcome, Transcript)]
    outcomes = [outcome for _, _, outcome in items]
    if not wanted:
        return outcomes
    requests = [(items[i][0], items[i][1]) for i in wanted]
    try:
        found = diarizer.turns(requests)
    except Exception:
        if len(wanted) > 1:
            return [diarize_outcomes(diarizer, [item])[0] for item in items]
        log.exception("diarization failed for one request")
        outcomes[wanted[0]] = ItemError(Reason.INFERENCE_FAILED, "diarization failed for this audio")
        return outcomes
    for i, turns in zip(wanted, found, strict=True):
        transcript = outcomes[i]
        assert isinstance(transcript, Transcript)
        outcomes[i] = replace(transcript, segments=with_speakers(transcript.segments, turns))
    return outcomes
