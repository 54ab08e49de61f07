"""`keep_freed_memory`: large tensors freed and made again at every step reuse the process's
memory instead of mapping (and the kernel zero-filling) fresh pages each time."""

import subprocess
import sys

import pytest

PROBE = """
import resource, torch
from seq2seq.allocator import keep_freed_memory

def step() -> None:  # beam search's large tensors, 1,600 rows x 8,000 tokens: 51 MB each, above
    log_probs = torch.log_softmax(torch.ones(1600, 8000), dim=-1)  # the largest mmap threshold
    (log_probs + 1.0).topk(10, dim=-1)

def page_faults() -> int:
    for _ in range(10):  # the heap settles
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = page_faults()
assert keep_freed_memory()
print(default, page_faults())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensors_reuse_memory():
    # A process of its own: the setting lasts for the life of a process.
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120
    )
    default, kept = map(int, probe.stdout.split())
    assert default >= 20 * 12_500  # each step maps its 51 MB tensors afresh: 12,500 pages each
    assert kept < default / 20  # less than one step's worth (the heap may grow once more)
