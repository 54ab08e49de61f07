"""A normal, non-editable install works away from the source tree: the default config and the
bundled Multi30k ship inside the package, so `seq2seq-train` needs no argument and no clone."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 600


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The package built as a wheel and installed (without dependencies: they are this
    environment's) into a folder of its own."""
    target = tmp_path_factory.mktemp("installed")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(REPO)],
        check=True, capture_output=True, timeout=TIMEOUT,
    )
    return target


def _run(installed: Path, cwd: Path, code: str) -> subprocess.CompletedProcess:
    # PYTHONPATH first: the installed copy shadows this checkout's editable install.
    env = {**os.environ, "PYTHONPATH": str(installed), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)


def test_the_installed_package_trains_on_its_bundled_data(installed, tmp_path):
    code = (
        "import seq2seq, sys\n"
        "from seq2seq.commands import train\n"
        f"assert seq2seq.__file__.startswith({str(installed)!r}), seq2seq.__file__\n"
        "config = str(train.CONFIGS / 'tiny.yaml')\n"
        "sys.argv = ['seq2seq-train']\n"
        "train.main(['--config', config, '--trainer.max_steps', '2',\n"
        "            '--trainer.default_root_dir', 'run',\n"
        "            '--trainer.enable_progress_bar', 'false'])\n"
    )
    run = _run(installed, tmp_path, code)
    assert run.returncode == 0, run.stderr[-3000:]
    (last,) = (tmp_path / "run").glob("**/last.ckpt")
    assert torch.load(last, weights_only=True)["global_step"] == 2


def test_the_installed_default_config_needs_no_argument(installed, tmp_path):
    code = (
        "import sys\n"
        "from seq2seq.commands import train\n"
        "from seq2seq.data.datamodule import BUNDLED_MULTI30K\n"
        "assert sorted(p.name for p in BUNDLED_MULTI30K.glob('*.gz'))[0] == "
        "'test_2016_flickr.de.gz'\n"
        "sys.argv = ['seq2seq-train']\n"
        "train.main(['--print_config'])\n"
    )
    run = _run(installed, tmp_path, code)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "default_root_dir: runs/multi30k_de_en" in run.stdout
