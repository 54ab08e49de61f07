"""Decoding a whole file on several processes, each with its own copy of the model.

One process with many threads leaves cores waiting on each other at every small operation of a
decoder step; separate processes, each with its own share of the sentences and a few threads,
do not. A sentence's translation does not depend on its batch (tested), so the output is the
same whichever process translates which line.

Processes are started with "spawn": a forked copy of a process that already ran torch's thread
pools can hang.
"""

import multiprocessing
import pickle
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import torch

from seq2seq.translator import PrefixError, TranslationResult, Translator

AUTO = "auto"  # one process per core, one thread each
# The most a loaded worker waits for the others to load: the last resort against a worker that
# died while loading (its peers would otherwise wait for it forever; see TranslatorPool).
LOAD_WAIT_S = 300

_translator: Translator | None = None  # in a worker: the model it loaded
_load_error: Exception | None = None  # in a worker: why it has none


def plan(workers: int | str, cores: int | None = None) -> tuple[int, int]:
    """(processes, torch threads per process) for `--workers`: the `cores` shared out, at least
    one thread each. `cores` is by default what torch uses in one process (the physical cores,
    or OMP_NUM_THREADS)."""
    cores = torch.get_num_threads() if cores is None else cores
    processes = cores if workers == AUTO else workers
    return processes, max(1, cores // processes)


def _start(load: Callable[[], Translator], threads: int, loaded) -> None:
    global _translator, _load_error
    # Ctrl-C reaches every process of the terminal's group: a worker ends at once and quietly
    # (Python would print a traceback from each), and the parent reports the interrupt. A
    # parent that ignores SIGINT (started in the background) passed that on: it stays so.
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    torch.set_num_threads(threads)
    try:
        _translator = load()
    except Exception as e:  # reported by _ready, as one line in the parent
        _load_error = e
    # Until every worker has loaded: the pool is ready when TranslatorPool() returns, so model
    # loading is not counted as decoding time. A timeout ends this worker, which the executor
    # then reports as a broken pool.
    loaded.wait(timeout=LOAD_WAIT_S)


def _ready() -> None:
    if _load_error is not None:
        raise _load_error


def _translate(texts: list[str], options: dict) -> bytes:
    # Plain pickle: torch's multiprocessing pickler would give every result's small attention
    # tensor a shared-memory file of its own, and a long file runs out of file descriptors.
    return pickle.dumps(_translator.translate(texts, **options))


class TranslatorPool:
    """`Translator.translate` spread over processes that each run `load()` once.

    Raises what `load` raises (in the first worker that failed), once every worker has tried.
    Use it as a context manager, or call `close()`.
    """

    def __init__(self, load: Callable[[], Translator], processes: int, threads: int):
        context = multiprocessing.get_context("spawn")
        self.processes = processes
        self._executor = ProcessPoolExecutor(
            processes,
            mp_context=context,
            initializer=_start,
            initargs=(load, threads, context.Barrier(processes)),
        )
        try:
            # One task per process makes the executor start them all now. One more wakes its
            # manager thread once the last process has started: CPython's submit wakes it just
            # before it starts a process, so the thread could be watching the processes without
            # the last one, miss its death while loading, and leave the others at the barrier.
            tasks = [self._executor.submit(_ready) for _ in range(processes + 1)]
            for future in tasks:
                future.result()
        except BaseException:
            self.close()
            raise

    def translate(self, texts: list[str], **options) -> list[list[TranslationResult]]:
        """As `Translator.translate`. Lines are dealt out in turn, so each process gets a
        similar mix of lengths and all finish at about the same time."""
        n = self.processes
        prefixes = options.pop("prefixes", None)  # per text: dealt out with the texts

        def share(i: int) -> dict:
            return options if prefixes is None else {**options, "prefixes": prefixes[i::n]}

        shares = {
            i: self._executor.submit(_translate, texts[i::n], share(i))
            for i in range(min(n, len(texts)))
        }
        results: list[list[TranslationResult]] = [[] for _ in texts]
        failed: list[PrefixError] = []
        for i, future in shares.items():
            try:
                results[i::n] = pickle.loads(future.result())
            except PrefixError as e:  # its index counts in share i: name the text's
                failed.append(PrefixError(i + e.index * n, e.problem))
        if failed:  # the first text that fails, as one process would report it
            raise min(failed, key=lambda e: e.index)
        return results

    def close(self) -> None:
        self._executor.shutdown(cancel_futures=True)

    def __enter__(self) -> "TranslatorPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
