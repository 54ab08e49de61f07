"""Dynamic batching: requests that arrive together are decoded together.

One worker thread owns the model. Requests wait in a bounded FIFO queue; the worker takes the
oldest one, waits at most `max_wait_ms` (counted from that request's arrival) for others with
the same search options, and decodes them all in one `Translator.translate` call costing at
most `max_batch_tokens` (source pieces times beam size: the rows the search carries, times
their length). Requests with other options keep their place for a later round, so every
request reaches the head of the queue in turn: none waits forever. A request over the budget is
decoded a part at a time, going to the back of the queue after each part, so a long document
delays the requests behind it by one part's decoding, not by all of it. A request whose client
has left (its future cancelled) is dropped from the queue, the rest of it undecoded.
"""

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

from seq2seq.translator import MAX_SRC_LEN, TranslationResult, Translator, readable

log = logging.getLogger(__name__)

# Defaults of `translate serve`. About 100 Multi30k sentences at beam 5: 32 one-sentence
# requests fit in one batch, and a long request's parts decode about as fast as the whole
# (with 4096 it took 2.4 times as long at beam 16: README, Serving).
MAX_BATCH_TOKENS = 8192  # source pieces (EOS included) times beam size
MAX_WAIT_MS = 10.0  # how long the oldest request waits for others to join it
# ... and the longest wait `--max-wait-ms` may ask for: a minute holds any batch together, and
# far longer ones (1e13 ms) are past what a thread can wait (OverflowError in the worker).
MOST_WAIT_MS = 60_000.0
MAX_QUEUE = 1024  # requests


class QueueFull(Exception):
    """The queue holds `max_queue` requests already (or the service stops): the client should
    retry later."""


class WorkerStopped(Exception):
    """The worker thread ended on an error; nothing more will be decoded."""


@dataclass(eq=False)  # a job is itself: `in` and `remove` on the queue compare identities
class _Job:
    texts: list  # sentences to translate, or (source, target) pairs to score
    options: dict  # keyword arguments of Translator.translate (or .score); equal options, and
    # only they, share a batch: {"score": True, ...} marks a scoring job
    costs: list[int]  # of each sentence: source pieces (EOS included) times beam size
    prefixes: list[str] | None = None  # of each sentence to translate (Translator.translate)
    arrived: float = field(default_factory=time.monotonic)
    future: Future = field(default_factory=Future)
    taken: int = 0  # sentences handed to the model so far: a long request goes in parts
    results: list = field(default_factory=list)  # of the sentences decoded so far, in order
    # sum(costs[taken:]), kept as parts are taken: the worker adds it up over the whole queue
    # each time a request arrives while it waits.
    cost_left: int = field(init=False)

    def __post_init__(self):
        self.cost_left = sum(self.costs)


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
        self.stopped_by: BaseException | None = None  # what ended the worker, if not stop()
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

    def pieces(self, texts: list[str], side: str = "source") -> list[int]:
        """Each text's SentencePiece pieces on the source or target side, EOS not counted."""
        translator = self.translator
        tokenizer = translator.src_tokenizer if side == "source" else translator.tgt_tokenizer
        return [len(p) for p in tokenizer.encode(readable(texts))]  # as Translator reads them

    def source_lengths(self, texts: list[str]) -> list[int]:
        """Each text's length as the model will read it: pieces cut to MAX_SRC_LEN, and EOS."""
        return [min(n, MAX_SRC_LEN) + 1 for n in self.pieces(texts)]

    def submit(
        self, texts: list, lengths: list[int], prefixes: list[str] | None = None, **options
    ) -> "Future[list[list[TranslationResult]]]":
        """Queue texts (`lengths`: their `source_lengths`) for `Translator.translate(texts,
        prefixes=prefixes, **options)`, or (source, target) pairs for `Translator.score` with
        score=True; raises QueueFull when `max_queue` requests wait. Requests with and without
        prefixes share batches (no prefix: "")."""
        job = _Job(texts, options, [n * options.get("beam_size", 1) for n in lengths], prefixes)
        with self._changed:
            if self.stopped_by is not None:
                raise _stopped(self.stopped_by)
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
        try:
            while batch := self._next_batch():
                self.batches += 1
                self._decode(batch)
        except BaseException as e:  # a fault of ours: fail the waiting requests, not hang them
            log.exception("the translation worker stopped")
            with self._changed:
                self.stopped_by = e
                for job in self._queue:
                    _settle(job.future, exception=_stopped(e))
                self._queue.clear()

    def _next_batch(self) -> list[tuple[_Job, int, int]]:
        """(job, first, end) for each job with sentences in the next batch: the oldest job's
        and those of later jobs with its options, within the budget; [] to end."""
        with self._changed:
            while True:
                # A request whose client has gone (its future cancelled) is not decoded further.
                for job in [job for job in self._queue if job.future.cancelled()]:
                    self._queue.remove(job)
                if self._queue:
                    break
                if self._stopping:
                    return []
                self._changed.wait()
            head = self._queue[0]
            deadline = head.arrived + self.max_wait
            while not self._stopping and self._cost_like(head) < self.max_batch_tokens:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            batch, cost, budget = [], 0, self.max_batch_tokens
            for job in list(self._queue):
                if job.options != head.options:
                    continue
                first = end = job.taken
                part = 0
                # The first sentence of a batch goes in whatever it costs: none waits forever.
                while end < len(job.texts) and (
                    cost + part == 0 or cost + part + job.costs[end] <= budget
                ):
                    part += job.costs[end]
                    end += 1
                if end == first:
                    break  # the budget is spent
                batch.append((job, first, end))
                job.taken, job.cost_left, cost = end, job.cost_left - part, cost + part
                self._queue.remove(job)
                if end < len(job.texts):
                    self._queue.append(job)  # the rest waits its turn behind the others
                    break
            return batch

    def _cost_like(self, head: _Job) -> int:
        return sum(job.cost_left for job in self._queue if job.options == head.options)

    def _decode(self, batch: list[tuple[_Job, int, int]]) -> None:
        texts = [text for job, first, end in batch for text in job.texts[first:end]]
        options = dict(batch[0][0].options)
        try:
            if options.pop("score", False):
                sources, targets = zip(*texts, strict=True)
                results = self.translator.score(list(sources), list(targets), **options)
            elif any(job.prefixes for job, _, _ in batch):
                prefixes = [
                    prefix
                    for job, first, end in batch
                    for prefix in (job.prefixes or [""] * len(job.texts))[first:end]
                ]
                results = self.translator.translate(texts, prefixes=prefixes, **options)
            else:
                results = self.translator.translate(texts, **options)
        except Exception as e:
            if len(batch) > 1:  # find the request that fails; the others still get answers
                for part in batch:
                    self._decode([part])
                return
            log.exception("translation failed")
            job = batch[0][0]
            with self._changed:  # its other parts are not decoded
                if job in self._queue:
                    self._queue.remove(job)
            _settle(job.future, exception=e)
            return
        start = 0
        for job, first, end in batch:
            job.results += results[start : start + end - first]
            start += end - first
            if len(job.results) == len(job.texts):
                self.requests += 1
                _settle(job.future, result=job.results)


def _stopped(cause: BaseException) -> WorkerStopped:
    return WorkerStopped(f"the translation worker stopped ({type(cause).__name__})")


def _settle(future: Future, result=None, exception: BaseException | None = None) -> None:
    """Give `future` its result or exception, unless its client has gone: the request's
    handler cancels it, from another thread, at any moment."""
    try:
        if exception is None:
            future.set_result(result)
        else:
            future.set_exception(exception)
    except InvalidStateError:  # cancelled
        pass
