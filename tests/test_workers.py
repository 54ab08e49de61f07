"""--workers: a whole file decoded by several processes gives what one process gives, line for
line, with the same warnings and exit status; errors stay one line."""

import functools
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from contextlib import nullcontext

import pytest

from seq2seq import cli
from seq2seq.commands import decode
from seq2seq.data.corpus import read_lines
from seq2seq.data.datamodule import BUNDLED_MULTI30K
from seq2seq.translator import Translator
from seq2seq.workers import AUTO, TranslatorPool, plan

pytestmark = pytest.mark.usefixtures("decoding_one_thread")

MAX_SRC_LEN = 60  # pieces: the long lines below are cut, with a warning naming each


@pytest.fixture(scope="module")
def mixed_lines() -> list[bytes]:
    """~200 input lines: sentences of every length, empty and blank lines, lines cut for being
    too long, and invalid UTF-8, each kind at several places."""
    sentences = read_lines(BUNDLED_MULTI30K / "val.de.gz")[:180]
    lines = [s.encode() for s in sentences]
    for i in range(0, 180, 20):
        lines[i : i + 1] = [lines[i], b"", b"  \t ", b" ".join([lines[i]] * 30)]
    lines[7] = b"Ein Mann \xff\xfe f\xe4hrt."
    return lines


@pytest.fixture(scope="module")
def mixed_file(tmp_path_factory, mixed_lines):
    path = tmp_path_factory.mktemp("workers") / "mixed.de"
    path.write_bytes(b"\n".join(mixed_lines) + b"\n")
    return path


def _translate(capsys, out, *args) -> tuple[int, bytes, list[str]]:
    status = cli.main([*map(str, args), "-o", str(out)])
    return status, out.read_bytes(), capsys.readouterr().err.splitlines()


def test_translate_file_with_workers_is_one_process_output(
    decoding_checkpoint, mixed_file, mixed_lines, capsys, tmp_path
):
    args = ["-m", decoding_checkpoint, "-i", mixed_file, "--max-src-len", MAX_SRC_LEN]
    one = _translate(capsys, tmp_path / "one.en", *args, "--workers", 1)
    two = _translate(capsys, tmp_path / "two.en", *args, "--workers", 2)
    assert one == two
    status, output, warnings = two
    assert status == 0
    assert output.count(b"\n") == len(mixed_lines)
    assert "translate: warning: line 8: invalid UTF-8 bytes replaced with U+FFFD" in warnings
    for n, line in enumerate(mixed_lines, 1):
        if len(line) > 1000:
            warning = f"translate: warning: line {n}: longer than {MAX_SRC_LEN} pieces; "
            assert warning + "only the beginning was translated" in warnings


def test_decode_with_workers_is_one_process_output(decoding_checkpoint, mixed_lines, tmp_path):
    src = tmp_path / "valid.de"  # seq2seq-decode refuses invalid UTF-8
    src.write_bytes(b"\n".join(line for line in mixed_lines if b"\xff" not in line) + b"\n")
    hyps = {}
    for workers in (1, 2):
        hyps[workers] = tmp_path / f"hyps{workers}.en"
        status = decode.main(
            [
                "--checkpoint", str(decoding_checkpoint), "--src", str(src),
                "--ref", str(src), "--beam-size", "1", "--workers", str(workers),
                "--output", str(hyps[workers]),
            ]
        )  # fmt: skip
        assert status == 0
    assert hyps[1].read_bytes() == hyps[2].read_bytes()


@pytest.fixture(scope="module")
def pool(decoding_checkpoint):
    with TranslatorPool(
        functools.partial(Translator.from_checkpoint, decoding_checkpoint), 2, 1
    ) as pool:
        yield pool


@pytest.mark.parametrize(
    "options",
    [
        {"beam_size": 1},
        {"beam_size": 3, "nbest": 3},
        # Each sentence draws from its own generator: the split among processes changes nothing.
        {"sampling": True, "sampling_topk": 20, "seed": 7},
    ],
)
def test_pool_translates_as_translator(pool, decoding_checkpoint, decoding_val_sources, options):
    translator = Translator.from_checkpoint(decoding_checkpoint)
    for texts in ([], decoding_val_sources[:1], decoding_val_sources):
        expected = translator.translate(texts, **options)
        got = pool.translate(texts, **options)
        # Texts are exact; scores agree to float32 rounding, as in any other batch (test_search).
        assert [[r.text for r in n] for n in got] == [[r.text for r in n] for n in expected]
        scores = [r.score for n in got for r in n]
        assert scores == pytest.approx([r.score for n in expected for r in n], abs=1e-5)


def test_pool_deals_out_prefixes_with_their_texts(pool, decoding_checkpoint,
                                                  decoding_val_sources):
    texts = decoding_val_sources[:9]
    prefixes = ["Two dogs", "", "A man", "", "The", "", "A woman is", "Zwei", "A"]
    expected = Translator.from_checkpoint(decoding_checkpoint).translate(
        texts, beam_size=2, prefixes=prefixes
    )
    got = pool.translate(texts, beam_size=2, prefixes=prefixes)
    assert [n[0].text for n in got] == [n[0].text for n in expected]


def test_a_worker_that_cannot_load_is_one_line(tmp_path, mixed_file, capsys):
    missing = tmp_path / "missing.ckpt"
    assert cli.main(["-m", str(missing), "-i", str(mixed_file), "--workers", "2"]) == 2
    assert capsys.readouterr().err == f"translate: error: {missing}: no such checkpoint file\n"


def test_a_pipe_stays_in_this_process(decoding_checkpoint, monkeypatch, capsys):
    read_end, write_end = os.pipe()
    os.write(write_end, b"Ein Hund rennt.\n\nZwei Kinder spielen.\n")
    os.close(write_end)
    with open(read_end, "rb") as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        assert cli.main(["-m", str(decoding_checkpoint), "--workers", "2"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 3 and out.splitlines()[1] == ""
    assert err == (
        "translate: warning: --workers applies to a whole file (-i, or < FILE); "
        "a pipe is translated here\n"
    )


@pytest.mark.parametrize(
    "workers, cores, expected",
    [(1, 2, (1, 2)), (2, 2, (2, 1)), (3, 8, (3, 2)), (4, 2, (4, 1)), (AUTO, 6, (6, 1))],
)
def test_plan_shares_the_cores(workers, cores, expected):
    assert plan(workers, cores) == expected


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5", ""])
def test_bad_workers_refused_in_one_line(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["-m", "x.ckpt", "--workers", value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(
        f"translate: error: argument --workers: expected a positive integer or 'auto', "
        f"got {value!r}"
    )
    with pytest.raises(SystemExit):
        decode.parse_args(["-m", "x", "--src", "s", "--ref", "r", "--workers", value])


def test_workers_auto_parses():
    args = decode.parse_args(["-m", "x", "--src", "s", "--ref", "r", "--workers", "auto"])
    assert args.workers == AUTO


def test_a_worker_that_dies_loading_stops_the_pool():
    with pytest.raises(BrokenProcessPool):  # not a hang: the others wait for it at a barrier
        TranslatorPool(functools.partial(os._exit, 3), 2, 1)


class _DeadPool:
    def translate(self, texts, **options):
        raise BrokenProcessPool("A process in the process pool was terminated abruptly")


def test_a_worker_that_dies_translating_is_one_error(mixed_file, monkeypatch, capsys):
    monkeypatch.setattr(cli, "open_translator", lambda *_, **__: nullcontext(_DeadPool()))
    assert cli.main(["-m", "x.ckpt", "-i", str(mixed_file), "--workers", "2"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "translate: error: --workers: a worker process stopped "
        "(A process in the process pool was terminated abruptly)"
    )


def _kill_a_worker() -> threading.Thread:
    """Kills (SIGKILL) the first worker process started after it, as the OOM killer would."""
    earlier = {child.pid for child in multiprocessing.active_children()}  # other tests' pools

    def kill():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for child in multiprocessing.active_children():
                if child.pid not in earlier:
                    os.kill(child.pid, signal.SIGKILL)
                    return
            time.sleep(0.05)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def test_decode_with_a_worker_killed_is_one_error(
    decoding_checkpoint, decoding_val_sources, tmp_path, capsys
):
    test_set = tmp_path / "test.de"
    test_set.write_text("".join(f"{s}\n" for s in decoding_val_sources[:200]), encoding="utf-8")
    killer = _kill_a_worker()
    status = decode.main([
        "-m", str(decoding_checkpoint), "--src", str(test_set), "--ref", str(test_set),
        "--workers", "2", "--beam-size", "5", "--batch-size", "1",
    ])
    killer.join()
    error = capsys.readouterr().err.splitlines()[-1]
    assert status == 2 and error.startswith(
        "seq2seq-decode: error: --workers: a worker process stopped ("
    ), error
