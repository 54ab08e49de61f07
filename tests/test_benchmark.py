"""Smoke test of scripts/benchmark.py: it runs end to end with tiny settings and its JSON line
has the documented keys. No timing is checked: figures from a shared test machine mean nothing."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from seq2seq.commands import benchmark

REPO = Path(__file__).resolve().parent.parent

KEYS = {
    "cpu", "train_tokens_per_s", "greedy_sents_per_s", "beam5_sents_per_s", "peak_rss_mb",
    "flop_utilization",
}


def run_benchmark(*options: str) -> dict:
    command = [
        sys.executable, str(REPO / "scripts" / "benchmark.py"), "--seconds", "2",
        "--warmup-steps", "1", "--sentences", "20", "--threads", "1", "--json", *options,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "| figure | value |", done.stdout  # stdout: the table, then the JSON
    return json.loads(lines[-1])


def test_benchmark_reports_every_key_for_a_config():
    result = run_benchmark("--config", "configs/tiny.yaml", "--profile", "2")
    assert KEYS <= result.keys()
    profile = result["profile"]  # two profiled steps, then the timed ones
    assert profile["steps"] == 2 and profile["decoder_steps"] > 2
    assert 0 < profile["matmul_share"] < 1
    assert profile["top"][0]["share"] >= profile["top"][-1]["share"] > 0
    assert result["train_tokens_per_s"] > 0 and result["train_steps"] >= 1
    assert 0 < result["flop_utilization"] < 1
    assert result["decode"]["greedy"]["tokens"] > 0
    assert result["decode_precision"] == "float32"


def test_profiling_is_over_before_the_timed_steps_start(tmp_path):
    """The profile's summary takes seconds on a GPU: it once landed inside the timed window and
    cut the reported tokens/s ninefold."""
    args, training_options = benchmark.parse_args(
        ["--config", "configs/tiny.yaml", "--profile", "2", "--warmup-steps", "1", "--seconds", "1"]
    )
    options = benchmark.config_options(args, training_options, None)
    _, _, timer, profiler, _, _ = benchmark.train(options, args, tmp_path)
    assert profiler.summary and profiler.summarised_at < timer.start


def test_benchmark_peer_mode_has_one_piece_per_word_and_fixed_length_rows():
    result = run_benchmark("--peer", "--bf16")
    assert KEYS <= result.keys()
    assert result["decode_precision"] == "bfloat16" and result["precision"] == "32-true"
    assert result["pieces_per_word"] == 1.0
    assert result["model"]["encoder_hidden_size"] == 128  # OpenNMT-py: 256 over 2 directions
    # EOS blocked: exactly 30 tokens for each of the 20 sentences
    assert result["decode"]["fixed30_greedy"]["tokens"] == 20 * 30
    assert result["decode"]["fixed30_beam5"]["tokens"] == 20 * 30


def test_benchmark_two_training_processes_sum_their_tokens():
    """DDP on CPU (gloo): both ranks stop at the same step (else one would hang), their counts
    are summed, and the report names the arrangement."""
    result = run_benchmark("--config", "configs/tiny.yaml", "--processes", "2")
    assert result["arrangement"] == "2 process(es) x 1 thread(s)"
    assert result["train_steps"] >= 2 and result["train_steps"] % 2 == 0
    assert result["train_tokens_per_s"] > 0


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--seconds", "nan"], "argument --seconds: must be a finite number, got nan"),
        (["--seconds", "0"], "argument --seconds: must be greater than 0"),
        (["--decode-batch", "0"], "argument --decode-batch: must be at least 1"),
        (["--processes", "0"], "argument --processes: must be at least 1"),
        (["--fixed-len", "-1"], "--fixed-len must be 0 (off)"),
        (["--config", "no-such.yaml"], "--config no-such.yaml: no such file"),
    ],
)
def test_bad_options_are_one_line_before_any_work(args, words, capsys):
    with pytest.raises(SystemExit) as exit_:
        benchmark.parse_args(args)
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("seq2seq-benchmark: error: ") and words in line, line


@pytest.mark.parametrize(
    ("options", "status", "words"),
    [
        (["--model.nope", "3"], 2, "unrecognized arguments: --model.nope 3"),
        (["--trainer.max_steps", "x"], 2, 'key "trainer.max_steps": Expected a <class \'int\'>'),
        (["--data.data_dir", "{tmp}/no-such-dir"], 1, "no such file or directory: {tmp}/no-such"),
    ],
)
def test_bad_training_options_or_data_are_one_line(tmp_path, options, status, words):
    # Passed on to the training CLI's parser; its errors, and the corpus's, as seq2seq-train's.
    command = [
        sys.executable, str(REPO / "scripts" / "benchmark.py"), "--config",
        str(REPO / "configs" / "tiny.yaml"), "--seconds", "1",
        *(option.format(tmp=tmp_path) for option in options),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    last = done.stderr.splitlines()[-1]
    assert done.returncode == status and done.stdout == "", done.stderr[-3000:]
    assert last.startswith("seq2seq-benchmark: error: "), last
    assert words.format(tmp=tmp_path) in last, last
