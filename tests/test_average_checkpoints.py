"""scripts/average_checkpoints.py: means of weights, the checks before, and --last N --dir."""

import copy
import dataclasses
from pathlib import Path

import pytest
import torch

from seq2seq.checkpoint import CheckpointError, load_model, save_model
from seq2seq.commands import average
from seq2seq.model import DROPOUTS, ModelConfig, Seq2Seq
from seq2seq.translator import Translator

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("decoding_one_thread")


@pytest.fixture(scope="module")
def script():
    return average


def _nudged(model: Seq2Seq, seed: int) -> Seq2Seq:
    """The model with small seeded noise on every weight: a stand-in for a later checkpoint."""
    generator = torch.Generator().manual_seed(seed)
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():  # a tied weight is one parameter: nudged once
            p.add_(0.01 * torch.randn(p.shape, generator=generator))
    return other


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, decoding_checkpoint, decoding_model, decoding_tokenizer):
    """The decoding checkpoint and two nudged copies of it, as save_model writes them."""
    folder = tmp_path_factory.mktemp("average")
    paths = [decoding_checkpoint]
    for seed in (1, 2):
        path = folder / f"nudged{seed}.ckpt"
        model = _nudged(decoding_model, seed)
        save_model(path, model, decoding_tokenizer, decoding_tokenizer, "de", "en")
        paths.append(path)
    return paths


def test_mean_of_two(script, checkpoints, tmp_path, decoding_val_sources):
    a, b = (load_model(p).model for p in checkpoints[:2])
    output = tmp_path / "averaged.ckpt"
    assert script.main([str(checkpoints[0]), str(checkpoints[1]), "--output", str(output)]) == 0
    averaged = load_model(output).model
    for name in ("encoder.embedding.weight", "decoder.weight_hh", "decoder.readout.bias"):
        expected = (a.get_parameter(name) + b.get_parameter(name)) / 2
        torch.testing.assert_close(averaged.get_parameter(name), expected, atol=1e-7, rtol=0)
    # The output layer is the (averaged) target embedding, still one tensor.
    assert averaged.decoder.output_layer.weight is averaged.encoder.embedding.weight
    results = Translator.from_checkpoint(output).translate(decoding_val_sources[:4])
    assert all(nbest[0].text for nbest in results)


def test_one_checkpoint_is_unchanged(script, checkpoints, tmp_path, decoding_val_sources):
    output = tmp_path / "one.ckpt"
    assert script.main([str(checkpoints[0]), "--output", str(output)]) == 0
    before, after = load_model(checkpoints[0]).model, load_model(output).model
    for (name, x), (_, y) in zip(
        before.state_dict().items(), after.state_dict().items(), strict=True
    ):
        assert torch.equal(x, y), name
    texts = decoding_val_sources[:6]
    expected = Translator.from_checkpoint(checkpoints[0]).translate(texts)
    got = Translator.from_checkpoint(output).translate(texts)
    assert [r[0].text for r in got] == [r[0].text for r in expected]


def test_other_config_is_refused(script, checkpoints, tmp_path, decoding_tokenizer, capsys):
    vocab = decoding_tokenizer.vocab_size
    sizes = dict(embedding_size=32, encoder_hidden_size=16, attention_size=16)
    config = ModelConfig(decoder_hidden_size=16, **sizes)  # the model's is 32
    other = tmp_path / "other.ckpt"
    model = Seq2Seq(config, vocab, vocab)
    save_model(other, model, decoding_tokenizer, decoding_tokenizer, "de", "en")
    output = tmp_path / "never.ckpt"
    assert script.main([str(checkpoints[0]), str(other), "--output", str(output)]) == 2
    (message,) = capsys.readouterr().err.splitlines()
    assert message.startswith("seq2seq-average: error:") and str(other) in message
    assert "model config differs" in message
    assert not output.exists()


def test_checkpoints_whose_dropouts_differ_are_averaged(
    script, decoding_model, decoding_tokenizer, tmp_path, capsys
):
    """A resume may change the dropouts: its checkpoints are still one model, averaged with the
    first's dropouts. Recurrent dropout 0.2 to 0.3 keeps the LSTM's written-out layers; 0 would
    run it fused, with weights named otherwise: that is another model."""
    config = decoding_model.config
    vocab = decoding_tokenizer.vocab_size
    paths = []
    for seed, dropouts in enumerate([(0.1, 0.0, 0.2), (0.3, 0.2, 0.3), (0.1, 0.0, 0.0)]):
        changed = dataclasses.replace(config, **dict(zip(DROPOUTS, dropouts, strict=True)))
        model = Seq2Seq(changed, vocab, vocab)
        model.load_state_dict(_nudged(decoding_model, seed).state_dict())
        paths.append(tmp_path / f"dropouts{seed}.ckpt")
        save_model(paths[-1], model, decoding_tokenizer, decoding_tokenizer, "de", "en")
    output = tmp_path / "averaged.ckpt"
    assert script.main([str(paths[0]), str(paths[1]), "--output", str(output)]) == 0
    averaged = load_model(output).model
    assert [getattr(averaged.config, name) for name in DROPOUTS] == [0.1, 0.0, 0.2]
    a, b = (load_model(p).model for p in paths[:2])
    name = "decoder.upper_layers.0.weight_hh"
    expected = (a.get_parameter(name) + b.get_parameter(name)) / 2
    torch.testing.assert_close(averaged.get_parameter(name), expected, atol=1e-7, rtol=0)
    capsys.readouterr()
    assert script.main([str(paths[0]), str(paths[2]), "--output", str(output)]) == 2
    assert capsys.readouterr().err == (
        f"seq2seq-average: error: {paths[2]}: model config differs from that of {paths[0]} "
        "(recurrent_dropout = 0.0, not 0.2)\n"
    )


def test_a_checkpoint_given_twice_is_refused(script, checkpoints, tmp_path, capsys):
    again = checkpoints[1].parent / ".." / checkpoints[1].parent.name / checkpoints[1].name
    output = tmp_path / "never.ckpt"
    argv = [str(checkpoints[0]), str(checkpoints[1]), str(again), "--output", str(output)]
    assert script.main(argv) == 2
    assert capsys.readouterr().err == (
        f"seq2seq-average: error: {again}: given twice (as {checkpoints[1]}); each "
        "model counts once\n"
    )
    assert not output.exists()


def test_usage_errors_are_one_line(script, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        script.main(["--output", str(tmp_path / "never.ckpt")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        "seq2seq-average: error: give either checkpoint files or --last N --dir DIR "
        "(see seq2seq-average --help)\n"
    )


def test_an_output_that_is_a_folder_is_refused_first(script, checkpoints, tmp_path, capsys):
    # It named the temporary file it could not move over the folder, after the averaging.
    with pytest.raises(SystemExit) as exit_:
        script.main([str(checkpoints[0]), str(checkpoints[1]), "--output", str(tmp_path)])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        f"seq2seq-average: error: --output {tmp_path}: a folder, not a file "
        "(see seq2seq-average --help)\n"
    )
    assert list(tmp_path.iterdir()) == []


def _as_training_checkpoint(source: Path, target: Path, step: int) -> None:
    """What Lightning writes: the same two keys, plus the step and training state."""
    checkpoint = torch.load(source, weights_only=True)
    checkpoint.update(global_step=step, epoch=0, optimizer_states=[{"state": {}}])
    torch.save(checkpoint, target)


def test_last_n_by_training_step(script, checkpoints, tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for path, name, step in zip(
        checkpoints, ("best-step10.ckpt", "step20.ckpt", "best-step30.ckpt"), (10, 20, 30),
        strict=True,
    ):
        _as_training_checkpoint(path, folder / name, step)
    _as_training_checkpoint(checkpoints[2], folder / "last.ckpt", 30)  # same step as best
    (folder / "averaged.ckpt").write_bytes(checkpoints[0].read_bytes())  # no step: skipped
    assert script.newest(folder, 2) == [folder / "step20.ckpt", folder / "best-step30.ckpt"]
    with pytest.raises(CheckpointError, match="3 checkpoints of distinct training steps, not 4"):
        script.newest(folder, 4)

    output = tmp_path / "last2.ckpt"
    assert script.main(["--last", "2", "--dir", str(folder), "--output", str(output)]) == 0
    b, c = (load_model(p).model for p in checkpoints[1:])
    expected = (b.decoder.bridge.weight + c.decoder.bridge.weight) / 2
    torch.testing.assert_close(load_model(output).model.decoder.bridge.weight, expected)
