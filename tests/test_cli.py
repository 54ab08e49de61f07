"""The `translate` command and scripts/decode.py.

Subprocesses prove what only a real process shows (pipes, exit codes, start-up); the rest calls
`cli.main` in this process, because every subprocess pays seconds of imports.
"""

import gzip
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from seq2seq import cli
from seq2seq.translator import Translator

REPO = Path(__file__).resolve().parent.parent
TRANSLATE = [sys.executable, "-m", "seq2seq.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny model; keep a shared machine responsive
TIMEOUT = 120  # seconds; start-up alone (torch, the checkpoint) takes a few

pytestmark = pytest.mark.usefixtures("decoding_one_thread")


def _translate(*args, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(
        [*TRANSLATE, *map(str, args)], input=stdin, capture_output=True, env=ENV, timeout=TIMEOUT
    )


def _lines(data: bytes) -> list[str]:
    text = data.decode("utf-8")
    assert text == "" or text.endswith("\n")
    return text.split("\n")[:-1]


def test_pipe_keeps_empty_lines(decoding_checkpoint):
    stdin = "Ein Mann fährt Fahrrad.\n\nZwei Hunde spielen im Schnee.\n".encode()
    run = _translate("-m", decoding_checkpoint, stdin=stdin)
    assert run.returncode == 0, run.stderr
    first, middle, last = _lines(run.stdout)
    assert first and middle == "" and last
    assert run.stderr == b""


def _main_with_stdin(monkeypatch, data: bytes, *args) -> int:
    """Run cli.main in this process with `data` arriving through a real pipe on stdin."""
    read_end, write_end = os.pipe()
    os.write(write_end, data)
    os.close(write_end)
    with open(read_end, "rb") as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        return cli.main([*map(str, args)])


def test_nbest_tsv_bad_bytes_and_crlf(decoding_checkpoint, monkeypatch, capsysbinary):
    stdin = b"Ein Mann\r\nbad \xff\xfe bytes\n\nZwei Hunde"  # the last line has no newline
    options = ["--nbest", 3, "--nbest-format", "tsv"]
    assert _main_with_stdin(monkeypatch, stdin, "-m", decoding_checkpoint, *options) == 0
    out, err = capsysbinary.readouterr()
    rows = [line.split("\t") for line in _lines(out)]
    assert [int(index) for index, _, _ in rows] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert all(text for index, _, text in rows if index != "2")
    assert [text for index, _, text in rows if index == "2"] == ["", "", ""]
    scores = [float(score) for _, score, _ in rows[:3]]
    assert scores == sorted(scores, reverse=True)
    (warning,) = err.decode().splitlines()
    assert "line 2" in warning and "UTF-8" in warning


def test_files_scores_and_plots(tmp_path, decoding_checkpoint, decoding_val_sources, capsys):
    source = tmp_path / "in.de.gz"
    long_line = " ".join(decoding_val_sources[:4])
    lines = [decoding_val_sources[0], decoding_val_sources[1], "", long_line]
    source.write_bytes(gzip.compress("".join(x + "\n" for x in lines).encode()))
    output, plots = tmp_path / "out.en", tmp_path / "plots"
    options = ["--scores", "--plot-attention", plots, "--max-src-len", 40, "--batch-size", 2]
    args = ["-m", decoding_checkpoint, "-i", source, "-o", output, *options]
    assert cli.main([*map(str, args)]) == 0
    rows = [line.split("\t") for line in _lines(output.read_bytes())]
    assert len(rows) == 4
    assert all(float(score) < 0 and text for score, text in rows[:2] + rows[3:])
    assert rows[2] == ["0.0000", ""]
    assert sorted(p.name for p in plots.iterdir()) == ["000001.png", "000002.png", "000004.png"]
    assert (plots / "000001.png").read_bytes().startswith(b"\x89PNG")
    out, err = capsys.readouterr()
    assert out == ""
    (warning,) = err.splitlines()
    assert "line 4" in warning and "40 pieces" in warning


def test_interactive_line_by_line(decoding_checkpoint):
    process = subprocess.Popen(
        [*TRANSLATE, "-m", str(decoding_checkpoint)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
    )
    replies: queue.Queue[bytes] = queue.Queue()
    threading.Thread(
        target=lambda: [replies.put(line) for line in iter(process.stdout.readline, b"")],
        daemon=True,
    ).start()
    try:
        # stdin stays open: an answer now proves the line was translated on arrival.
        process.stdin.write("Ein Mann fährt Fahrrad.\n".encode())
        process.stdin.flush()
        assert replies.get(timeout=TIMEOUT).strip()
        process.stdin.write(b"\n")
        process.stdin.flush()
        assert replies.get(timeout=TIMEOUT) == b"\n"
        process.stdin.close()
        assert process.wait(timeout=TIMEOUT) == 0
    finally:
        process.kill()
    assert replies.empty()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"Ein Hund.\n", "Not a gzipped file"),
        (gzip.compress(b"Ein Hund.\nZwei Katzen.\n")[:20], "Compressed file ended before"),
    ],
)
def test_an_unreadable_input_is_one_line_before_the_model_loads(tmp_path, capsys, data, reason):
    path = tmp_path / "input.de.gz"
    path.write_bytes(data)
    assert cli.main(["-m", str(tmp_path / "never-read.ckpt"), "-i", str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"translate: error: {path}: cannot read ({reason}")


def test_output_over_its_own_input_is_read_first(tmp_path, decoding_checkpoint, capsys):
    # The input used to be read after -o had opened (emptied) the same file: nothing to translate.
    path = tmp_path / "text.txt"
    path.write_text("Ein Mann fährt Fahrrad.\nZwei Hunde spielen im Schnee.\n")
    assert cli.main(["-m", str(decoding_checkpoint), "-i", str(path), "-o", str(path)]) == 0
    translated = path.read_text().splitlines()
    assert len(translated) == 2 and all(translated), translated


def test_a_closed_stdin_is_one_line():
    run = subprocess.run(
        [*TRANSLATE, "-m", "never-read.ckpt"], preexec_fn=lambda: os.close(0),
        capture_output=True, env=ENV, timeout=TIMEOUT,
    )
    assert run.returncode == 2
    assert run.stderr == b"translate: error: no input: stdin is closed; give -i FILE\n"


def test_a_closed_stdout_is_one_line(tmp_path):
    # Each command would otherwise fail on sys.stdout being None, or print its scores nowhere.
    test_set = tmp_path / "test.de"
    test_set.write_text("Ein Hund.\n")
    for command, message in (
        (TRANSLATE, "translate: error: no output: stdout is closed; give -o FILE"),
        ([sys.executable, "-m", "seq2seq.commands.score", "--src", test_set, "--ref", test_set],
         "seq2seq-score: error: no output: stdout is closed; give --output FILE"),
        ([sys.executable, "-m", "seq2seq.commands.decode", "--src", test_set, "--ref", test_set],
         "seq2seq-decode: error: no output: stdout is closed; the scores are printed there"),
    ):
        run = subprocess.run(
            [*map(str, command), "-m", "never-read.ckpt"], preexec_fn=lambda: os.close(1),
            stderr=subprocess.PIPE, input=b"Ein Hund.\n", env=ENV, timeout=TIMEOUT,
        )
        assert (run.returncode, run.stderr.decode()) == (2, message + "\n")


def test_input_from_a_pipe_and_a_folder(decoding_checkpoint, tmp_path, capsys):
    # -i <(...) is a pipe: read as a file (it once said "no such input file"); a folder is not.
    fifo = tmp_path / "input.de"
    os.mkfifo(fifo)
    text = "Ein Hund.\nZwei Katzen.\n"
    writer = threading.Thread(target=fifo.write_text, args=(text,), daemon=True)
    writer.start()
    assert cli.main(["-m", str(decoding_checkpoint), "-i", str(fifo)]) == 0
    writer.join()
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert cli.main(["-m", "never-read.ckpt", "-i", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith(f"translate: error: {tmp_path}: cannot read (")


def test_an_interrupted_run_leaves_its_own_input_whole(decoding_checkpoint, tmp_path):
    # -o naming the -i file: written beside it and moved over it at the end, so that Ctrl-C
    # half-way leaves the input as it was (it was emptied when -o opened).
    path = tmp_path / "text.de"
    text = "Ein Mann fährt Fahrrad.\nZwei Hunde spielen im Schnee.\n" * 400
    path.write_text(text)
    path.chmod(0o640)
    run = subprocess.Popen(
        [*TRANSLATE, "-m", decoding_checkpoint, "-i", path, "-o", path, "--batch-size", "1",
         "--beam-size", "5"], stderr=subprocess.PIPE, env=ENV,
    )
    deadline = time.monotonic() + TIMEOUT
    while not list(tmp_path.glob(".text.de.*.tmp")) and path.stat().st_size == len(text.encode()):
        assert time.monotonic() < deadline and run.poll() is None
        time.sleep(0.05)
    time.sleep(0.5)  # some lines written
    run.send_signal(signal.SIGINT)
    assert run.wait(TIMEOUT) == 130
    assert path.read_text() == text
    assert list(tmp_path.iterdir()) == [path]  # the unfinished file is gone
    assert cli.main(["-m", str(decoding_checkpoint), "-i", str(path), "-o", str(path)]) == 0
    assert len(path.read_text().splitlines()) == 800 and path.stat().st_mode & 0o777 == 0o640


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_full_disk_names_the_output(decoding_checkpoint, tmp_path, capsys):
    path = tmp_path / "input.de"
    path.write_text("Ein Hund läuft.\n")
    code = cli.main(["-m", str(decoding_checkpoint), "-i", str(path), "-o", "/dev/full"])
    assert code == 2
    error = capsys.readouterr().err
    assert error.endswith("translate: error: /dev/full: No space left on device\n"), error


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_decode_prints_its_scores_when_the_output_cannot_be_written(
    decoding_checkpoint, tmp_path, capsys
):
    from seq2seq.commands import decode

    source, reference = tmp_path / "test.de", tmp_path / "test.en"
    source.write_text("Ein Hund läuft.\n")
    reference.write_text("A dog runs.\n")
    files = ["--src", str(source), "--ref", str(reference)]
    assert decode.main(["-m", str(decoding_checkpoint), *files, "--output", "/dev/full"]) == 2
    out, error = capsys.readouterr()
    assert out.startswith("BLEU")  # the decoding is not lost
    assert error == "seq2seq-decode: error: --output /dev/full: No space left on device\n"
    # A folder that cannot be made fails before the model is loaded.
    unmakeable = tmp_path / "test.de" / "hyp.en"  # below a file
    assert decode.main(["-m", "never-read.ckpt", *files, "--output", str(unmakeable)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"seq2seq-decode: error: --output {unmakeable}: cannot")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_decode_whose_stdout_fails_is_one_line(decoding_checkpoint, tmp_path):
    """A full disk behind `> file` is one line; a reader gone (`| head`) ends it quietly."""
    source = tmp_path / "test.de"
    source.write_text("Ein Hund läuft.\n")
    command = [sys.executable, "-m", "seq2seq.commands.decode", "-m", str(decoding_checkpoint),
               "--src", str(source), "--ref", str(source)]
    with open("/dev/full", "w") as full:
        run = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True,
                             timeout=TIMEOUT)
    assert run.returncode == 2
    assert run.stderr.endswith("seq2seq-decode: error: stdout: No space left on device\n")
    gone = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    gone.stdout.close()  # before anything is written
    assert gone.wait(TIMEOUT) == 1
    assert "Traceback" not in gone.stderr.read()


def test_bad_checkpoint_exits_2(tmp_path):
    path = tmp_path / "broken.ckpt"
    path.write_bytes(b"not a checkpoint at all")
    run = _translate("-m", path, stdin=b"Ein Hund.\n")
    assert run.returncode == 2
    (message,) = run.stderr.decode().splitlines()
    assert message.startswith("translate: error:") and str(path) in message
    assert run.stdout == b""


def test_a_failing_line_is_an_empty_line(tmp_path, decoding_checkpoint, monkeypatch, capsys):
    translate = Translator.translate

    def fragile(self, texts, **kwargs):
        if any("Explosion" in t for t in texts):
            raise RuntimeError("boom")
        return translate(self, texts, **kwargs)

    monkeypatch.setattr(Translator, "translate", fragile)
    source, output = tmp_path / "in.de", tmp_path / "out.en"
    source.write_text("Ein Hund.\nEine Explosion.\nEine Katze.\n")
    assert cli.main(["-m", str(decoding_checkpoint), "-i", str(source), "-o", str(output)]) == 1
    first, failed, last = _lines(output.read_bytes())
    assert first and failed == "" and last
    assert "line 2: translation failed (RuntimeError: boom)" in capsys.readouterr().err


def test_decode_script_json(tmp_path, decoding_checkpoint):
    data = REPO / "data" / "multi30k"
    for lang in ("de", "en"):
        lines = gzip.decompress((data / f"val.{lang}.gz").read_bytes()).splitlines()[:40]
        (tmp_path / f"val.{lang}").write_bytes(b"\n".join(lines) + b"\n")
    hypotheses = tmp_path / "hyp.en"
    files = ["--src", tmp_path / "val.de", "--ref", tmp_path / "val.en", "--output", hypotheses]
    run = subprocess.run(
        [sys.executable, REPO / "scripts" / "decode.py", "--checkpoint", decoding_checkpoint]
        + [*files, "--beam-size", "2", "--json"],
        capture_output=True,
        env=ENV,
        timeout=TIMEOUT,
    )
    assert run.returncode == 0, run.stderr
    *report, last = run.stdout.decode().splitlines()
    result = json.loads(last)
    assert set(result) >= {"bleu", "chrf", "ter", "signature", "sentences", "seconds"}
    assert result["sentences"] == 40 == len(hypotheses.read_text().splitlines())
    assert result["signature"]["bleu"].startswith("nrefs:1|")
    assert any(line.startswith("BLEU") for line in report)


def test_translate_and_decode_end_lines_alike(tmp_path, decoding_checkpoint, capsys):
    """One file with every kind of line end, a lone "\\r" included (old Mac files): translate
    and seq2seq-decode see the same lines, so their outputs pair up line by line."""
    from seq2seq.commands import decode

    source = tmp_path / "mixed.de"
    source.write_bytes(b"Ein Hund.\rZwei Katzen.\r\nEin Mann.\nEine Frau.\r")
    reference = tmp_path / "mixed.en"
    reference.write_bytes(b"A dog.\nTwo cats.\nA man.\nA woman.\n")
    translated = tmp_path / "translate.en"
    model = ["-m", str(decoding_checkpoint), "--beam-size", "2"]
    assert cli.main([*model, "-i", str(source), "-o", str(translated)]) == 0
    decoded = tmp_path / "decode.en"
    files = ["--src", str(source), "--ref", str(reference), "--output", str(decoded)]
    assert decode.main([*model, *files, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["sentences"] == 4
    assert _lines(translated.read_bytes()) == _lines(decoded.read_bytes())
    assert len(_lines(decoded.read_bytes())) == 4
    # ... and through a pipe, where a read may end between "\r" and "\n".
    run = _translate(*model, stdin=source.read_bytes())
    assert _lines(run.stdout) == _lines(translated.read_bytes())


def test_a_read_that_ends_in_cr_waits_for_a_possible_lf():
    """A pipe read may end between the "\r" and the "\n" of one line end: it must stay one
    line end, not become two."""
    read_end, write_end = os.pipe()

    def writer():
        os.write(write_end, b"one\r")
        time.sleep(0.3)  # the reader has returned from its first read by now
        os.write(write_end, b"\ntwo\rthree")
        os.close(write_end)

    thread = threading.Thread(target=writer)
    thread.start()
    lines = [line for group in cli._stream_groups(read_end) for line in group]
    thread.join()
    os.close(read_end)
    assert lines == [b"one", b"two", b"three"]
