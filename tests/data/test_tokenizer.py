import io
import pickle
from pathlib import Path

import pytest
import sentencepiece as spm

from seq2seq.data.corpus import clean, read_lines
from seq2seq.data.tokenizer import Tokenizer
from seq2seq.special_tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID

MULTI30K = Path(__file__).resolve().parents[2] / "data" / "multi30k"


def sentences(split: str, n: int) -> list[str]:
    """The first n cleaned lines of a bundled split, German then English."""
    files = [MULTI30K / f"{split}.{lang}.gz" for lang in ("de", "en")]
    return [clean(line) for file in files for line in read_lines(file)[:n]]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.train(sentences("train", 1000), vocab_size=1000)


def test_special_ids_are_fixed(tokenizer):
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    assert tokenizer.pieces([PAD_ID, UNK_ID, BOS_ID, EOS_ID]) == ["<pad>", "<unk>", "<s>", "</s>"]
    assert tokenizer.vocab_size == 1000


def test_round_trip_on_unseen_multi30k_lines(tokenizer):
    texts = sentences("val", 300)
    ids = tokenizer.encode(texts)
    assert all(BOS_ID not in row and EOS_ID not in row for row in ids)
    assert tokenizer.decode(ids) == texts


def test_byte_fallback_round_trips_unseen_characters(tokenizer):
    texts = ["Ein Hund 🐕 läuft über 漢字 und ½ Wiese.", "ﬁ…"]
    ids = tokenizer.encode(texts)
    assert all(UNK_ID not in row for row in ids)
    assert tokenizer.decode(ids) == texts
    assert "<0xF0>" in tokenizer.pieces(ids[0])  # the dog emoji's first UTF-8 byte


def test_decode_skips_specials_and_stops_at_eos(tokenizer):
    ids = tokenizer.encode(["Ein Hund läuft."])[0]
    rows = [[BOS_ID, *ids, EOS_ID, *ids, PAD_ID], [*ids, PAD_ID, PAD_ID], [EOS_ID, *ids], []]
    assert tokenizer.decode(rows) == ["Ein Hund läuft.", "Ein Hund läuft.", "", ""]


def test_training_is_deterministic():
    texts = sentences("train", 300)
    first = Tokenizer.train(texts, vocab_size=500)
    second = Tokenizer.train(iter(texts), vocab_size=500)
    assert first.model_proto == second.model_proto


def test_small_corpus_gets_a_smaller_vocabulary():
    tokenizer = Tokenizer.train(["ein Hund", "a dog"] * 20, vocab_size=8000)
    assert 4 + 256 < tokenizer.vocab_size < 8000  # specials + bytes + a few pieces
    assert tokenizer.decode(tokenizer.encode(["a dog"])) == ["a dog"]


def test_vocabulary_too_small_for_the_characters():
    with pytest.raises(ValueError, match="SentencePiece training failed") as excinfo:
        Tokenizer.train(sentences("train", 50), vocab_size=50)
    assert "\n" not in str(excinfo.value)


def test_save_load_and_pickle(tokenizer, tmp_path):
    tokenizer.save(tmp_path / "spm.model")
    assert Tokenizer.load(tmp_path / "spm.model").model_proto == tokenizer.model_proto
    copy = pickle.loads(pickle.dumps(tokenizer))
    assert copy.encode(["ein Hund"]) == tokenizer.encode(["ein Hund"])


def test_model_bytes_are_what_sentencepiece_loads(tokenizer):
    processor = spm.SentencePieceProcessor(model_proto=tokenizer.model_proto)
    assert processor.encode(["ein Hund"]) == tokenizer.encode(["ein Hund"])


@pytest.mark.parametrize("data", [b"", b"not a model", b"\x08\x01\x12"])
def test_bytes_that_are_not_a_model(data):
    with pytest.raises(ValueError) as excinfo:
        Tokenizer(data)
    assert "\n" not in str(excinfo.value)


def test_truncated_model(tokenizer):
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        Tokenizer(tokenizer.model_proto[: len(tokenizer.model_proto) // 2])


def test_model_with_other_special_ids():
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(  # SentencePiece's defaults: unk=0, bos=1, eos=2, no pad
        sentence_iterator=iter(["ein Hund", "a dog"] * 20),
        model_writer=model,
        vocab_size=30,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    with pytest.raises(ValueError, match="pad/unk/bos/eos ids"):
        Tokenizer(model.getvalue())
