"""Dynamic batching: requests that arrive together are decoded together.

One worker thread owns the model. Requests wait in a bounded FIFO queue; the worker takes the
oldest one, waits at most `max_wait_ms` (counted from that request's arrival) for others with
the same search options, and decodes them all in one `Translator.translate` call of at most
`max_batch_tokens` source pieces. Requests with other options keep their place for a later
round, so every request reaches the head of the queue in turn: none waits forever.
"""

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

from seq2seq.data.corpus import clean
from seq2seq.translator import MAX_SRC_LEN, TranslationResult, Translator

log = logging.getLogger(__name__)

# Defaults of `translate serve`. 32 one-sentence requests of Multi30k fit in one batch many
# times over; a larger budget mostly adds latency on a CPU.
MAX_BATCH_TOKENS = 4096  # source pieces, EOS included
MAX_WAIT_MS = 10.0  # how long the oldest request waits for others to join it
MAX_QUEUE = 1024  # requests


class QueueFull(Exception):
    """The queue holds `max_queue` requests already: the client should retry later."""


@dataclass
class _Job:
    texts: list[str]
    options: dict  # keyword arguments of Translator.translate; equal options share a batch
    tokens: int  # source pieces, EOS included: what the batch budget counts
    arrived: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)


class DynamicBatcher:
    def __init__(
        self, translator: Translator, max_batch_tokens: int, max_wait_ms: float, max_queue: int
    ):
        self.translator = translator
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = max_wait_ms / 1000
        self.max_queue = max_queue
        self._queue: deque[_Job] = deque()
        self._changed = threading.Condition()
        self._stopping = False
        self._worker = threading.Thread(target=self._run, name="translator", daemon=True)
        self.requests = 0  # decoded so far, and the batches they made: GET /health reports
        self.batches = 0  # both, so that a load test sees how much batching happened

    def start(self) -> None:
        self._worker.start()

    def stop(self) -> None:
        """Decode what is queued, then end the worker."""
        with self._changed:
            self._stopping = True
            self._changed.notify()
        self._worker.join()

    def submit(self, texts: list[str], **options) -> "Future[list[list[TranslationResult]]]":
        """Queue texts for translation; raises QueueFull when `max_queue` requests wait."""
        # Counted as the translator will see them, cut to MAX_SRC_LEN; lone surrogates (JSON
        # may hold them) become "?", which SentencePiece accepts: only the count matters here.
        readable = [clean(t).encode("utf-8", "replace").decode("utf-8") for t in texts]
        pieces = self.translator.src_tokenizer.encode(readable)
        job = _Job(texts, options, sum(min(len(p), MAX_SRC_LEN) + 1 for p in pieces))
        with self._changed:
            if self._stopping:
                raise QueueFull("the service is shutting down")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{self.max_queue} requests are waiting already")
            self._queue.append(job)
            self._changed.notify()
        return job.future

    def queued(self) -> int:
        return len(self._queue)

    def _run(self) -> None:
        while batch := self._next_batch():
            self.batches += 1
            self.requests += len(batch)
            self._decode(batch)

    def _next_batch(self) -> list[_Job]:
        """The oldest job and the jobs with its options that fit the budget; [] to end."""
        with self._changed:
            while not self._queue:
                if self._stopping:
                    return []
                self._changed.wait()
            head = self._queue[0]
            deadline = head.arrived + self.max_wait
            while not self._stopping and self._tokens_like(head) < self.max_batch_tokens:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            batch, tokens = [], 0
            for job in list(self._queue):
                if job.options != head.options:
                    continue
                if batch and tokens + job.tokens > self.max_batch_tokens:
                    break
                batch.append(job)
                tokens += job.tokens
                self._queue.remove(job)
            return batch

    def _tokens_like(self, head: _Job) -> int:
        return sum(job.tokens for job in self._queue if job.options == head.options)

    def _decode(self, batch: list[_Job]) -> None:
        texts = [text for job in batch for text in job.texts]
        try:
            results = self.translator.translate(texts, **batch[0].options)
        except Exception as e:
            if len(batch) > 1:  # find the request that fails; the others still get answers
                for job in batch:
                    self._decode([job])
                return
            log.exception("translation failed")
            batch[0].future.set_exception(e)
            return
        start = 0
        for job in batch:
            job.future.set_result(results[start : start + len(job.texts)])
            start += len(job.texts)
