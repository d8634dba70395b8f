"""CUDA graphs of a decoder's fixed-shape work: each piece captured on first use, replayed after.

A graphed decoder keeps its state in buffers updated in place, so that a replay reads and writes the
memory the capture saw; this is the one place that captures and replays them, and that says which
batch sizes get a graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence

import torch
from torch import Tensor

# batch sizes get a graph each: powers of two up to 16, then multiples of 16 (a padded row costs
# a real row's work, so large batches are padded by at most 15 rows)
SMALL_BUCKETS = (1, 2, 4, 8, 16)
BUCKET_STEP = 16


def bucket(n_rows: int, capacity: int) -> int:
    """Rows a graph runs for `n_rows` rows: one of SMALL_BUCKETS or a multiple of BUCKET_STEP, at most `capacity`."""
    size = next((s for s in SMALL_BUCKETS if s >= n_rows), math.ceil(n_rows / BUCKET_STEP) * BUCKET_STEP)
    return min(size, capacity)


class GraphCache:
    """Graphs by key, sharing one memory pool and one capture stream; plain calls where graphs are off.

    >>> graphs = GraphCache(device, enabled=True, state=[decoder.tokens, decoder.hidden])
    >>> graphs.runner(("layer", rows, 3), lambda: decoder.finish_layer(rows, 3))()
    """

    def __init__(self, device: torch.device, enabled: bool, state: Sequence[Tensor]) -> None:
        self.enabled = enabled
        # what a capture's warm-up run advances and must be put back before the graph replays
        self.state = list(state)
        self.graphs: dict[Hashable, torch.cuda.CUDAGraph] = {}
        # graphs share one memory pool: each writes its results into the decoder's buffers, never into
        # pool memory that another graph's replay could reuse
        self.pool = torch.cuda.graph_pool_handle() if enabled else None
        # one stream for every capture's warm-up run: a new stream per capture costs a driver call
        self.stream = torch.cuda.Stream(device) if enabled else None  # type: ignore[no-untyped-call]

    def __len__(self) -> int:
        return len(self.graphs)

    def clear(self) -> None:
        """Forget every graph (what they read in place is about to change)."""
        self.graphs.clear()

    def runner(self, key: Hashable, work: Callable[[], None]) -> Callable[[], None]:
        """What runs `work`: itself without graphs, else its graph's replay, captured on first use."""
        if not self.enabled:
            return work
        graph = self.graphs.get(key)
        if graph is not None:
            return graph.replay

        def capture_then_replay() -> None:
            if key not in self.graphs:
                self.graphs[key] = self._capture(work)
            self.graphs[key].replay()

        return capture_then_replay

    def _capture(self, work: Callable[[], None]) -> torch.cuda.CUDAGraph:
        side = self.stream
        if side is None:
            raise RuntimeError("graphs are captured only where they are enabled")
        # the warm-up run (which lets cuBLAS and the allocator settle outside the capture) really
        # executes, so the decoding state it advances is put back before the graph replays it
        saved = [tensor.clone() for tensor in self.state]
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            work()
        torch.cuda.current_stream().wait_stream(side)
        for tensor, copy in zip(self.state, saved, strict=True):
            tensor.copy_(copy)
        del saved
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            work()
        return graph
