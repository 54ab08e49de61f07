import contextlib
from pathlib import Path

import pytest
import torch

from seq2seq.data.batching import pad, source_tensors
from seq2seq.data.corpus import clean, read_lines
from seq2seq.data.tokenizer import Tokenizer
from seq2seq.model import ModelConfig, Seq2Seq
from seq2seq.special_tokens import BOS_ID, EOS_ID, PAD_ID

REPO = Path(__file__).resolve().parent.parent
MULTI30K = REPO / "data" / "multi30k"


# --- decoding fixtures (search, checkpoint, translator, cli): names start with "decoding_" ---

DECODING_PAIRS = 1000  # first lines of the bundled Multi30k train split
DECODING_STEPS = 120  # Adam steps: enough that outputs are sentence-like, not one token repeated
DECODING_TRAIN_PIECES = 32  # training keeps pairs this short: step time grows with length


@contextlib.contextmanager
def _one_thread():
    # Tiny models gain nothing from threads, and two busy-waiting OpenMP pools on a shared
    # 2-core machine run a hundred times slower than one thread does.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def decoding_one_thread():
    """Use with `pytestmark = pytest.mark.usefixtures("decoding_one_thread")`."""
    with _one_thread():
        yield


@pytest.fixture(scope="session")
def decoding_pairs() -> tuple[list[str], list[str]]:
    de = [clean(x) for x in read_lines(MULTI30K / "train.de.gz")[:DECODING_PAIRS]]
    en = [clean(x) for x in read_lines(MULTI30K / "train.en.gz")[:DECODING_PAIRS]]
    return de, en


@pytest.fixture(scope="session")
def decoding_tokenizer(decoding_pairs) -> Tokenizer:
    """One joint de+en SentencePiece model, as the default configs use."""
    de, en = decoding_pairs
    return Tokenizer.train(de + en, vocab_size=500)


@pytest.fixture(scope="session")
def decoding_model(decoding_pairs, decoding_tokenizer) -> Seq2Seq:
    """A tiny Seq2Seq trained briefly with teacher forcing (two decoder layers, to exercise
    state reordering over layers); returned in eval mode."""
    torch.manual_seed(0)
    vocab = decoding_tokenizer.vocab_size
    config = ModelConfig(
        embedding_size=32,
        encoder_hidden_size=16,
        decoder_hidden_size=32,
        decoder_layers=2,
        attention_size=16,
        dropout=0.0,
        embedding_dropout=0.0,
    )
    model = Seq2Seq(config, vocab, vocab)
    pairs = zip(*map(decoding_tokenizer.encode, decoding_pairs), strict=True)
    pairs = [(s, t) for s, t in pairs if max(len(s), len(t)) <= DECODING_TRAIN_PIECES]
    src_ids, tgt_ids = zip(*pairs, strict=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    with _one_thread():
        _decoding_train(model, optimizer, src_ids, tgt_ids, generator)
    return model.eval()


def _decoding_train(model, optimizer, src_ids, tgt_ids, generator) -> None:
    vocab = model.tgt_vocab_size
    for _ in range(DECODING_STEPS):
        index = torch.randint(len(src_ids), (32,), generator=generator).tolist()
        src, src_lengths = source_tensors([src_ids[i] for i in index])
        tgt = pad([[BOS_ID] + tgt_ids[i] + [EOS_ID] for i in index])
        logits = model(src, src_lengths, tgt[:, :-1])  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, vocab), tgt[:, 1:].reshape(-1), ignore_index=PAD_ID
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.fixture(scope="session")
def decoding_checkpoint(tmp_path_factory, decoding_model, decoding_tokenizer) -> Path:
    from seq2seq.checkpoint import save_model

    path = tmp_path_factory.mktemp("decoding") / "tiny.ckpt"
    save_model(path, decoding_model, decoding_tokenizer, decoding_tokenizer, "de", "en")
    return path


@pytest.fixture(scope="session")
def decoding_val_sources() -> list[str]:
    """50 validation sentences of mixed lengths, in file order."""
    return [clean(x) for x in read_lines(MULTI30K / "val.de.gz")[:400:8]]


# --- end of decoding fixtures ---
