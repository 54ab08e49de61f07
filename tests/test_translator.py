import pytest
import torch

from seq2seq.data.batching import source_tensors
from seq2seq.search import greedy_search
from seq2seq.translator import Translator

pytestmark = pytest.mark.usefixtures("decoding_one_thread")


@pytest.fixture
def translator(decoding_model, decoding_tokenizer) -> Translator:
    return Translator(decoding_model, decoding_tokenizer, decoding_tokenizer)


def test_results_in_input_order(translator, decoding_val_sources):
    texts = decoding_val_sources[:12]
    together = translator.translate(texts, batch_size=5)
    alone = [translator.translate([t])[0] for t in texts]
    assert [r[0].text for r in together] == [r[0].text for r in alone]
    assert all(r[0].text for r in together)


def test_empty_inputs_never_reach_the_model(translator, monkeypatch):
    def no_encode(*args):
        raise AssertionError("the model was run")

    monkeypatch.setattr(translator.model, "encode", no_encode)
    results = translator.translate(["", "   ", "\t\u00a0"], beam_size=2, nbest=2)
    for nbest in results:
        assert [(r.text, r.tokens, r.src_pieces) for r in nbest] == [("", [], [])] * 2


def test_result_fields(translator, decoding_tokenizer, decoding_val_sources):
    for nbest in translator.translate(decoding_val_sources[:4], nbest=3):
        assert len(nbest) == 3
        for result in nbest:
            assert result.text == decoding_tokenizer.decode([result.tokens])[0]
            assert result.tgt_pieces[-1] == result.src_pieces[-1] == "</s>"
            assert result.attention.shape == (len(result.tgt_pieces), len(result.src_pieces))
            assert len(result.token_log_probs) == len(result.tgt_pieces)
            assert not result.truncated


def test_inputs_are_cleaned(translator):
    messy, tidy = translator.translate(["Ein  Mann\u00a0fährt\tRad. ", "Ein Mann fährt Rad."])
    assert messy[0].tokens == tidy[0].tokens


def test_long_source_is_cut(translator, decoding_val_sources):
    text = " ".join(decoding_val_sources[:3])
    (result,) = translator.translate([text], max_src_len=6)[0]
    assert result.truncated
    assert len(result.src_pieces) == 7  # six pieces and EOS
    assert result.attention.shape[1] == 7


def test_beam_size_one_is_greedy(translator, decoding_model, decoding_tokenizer):
    text = "Zwei Hunde spielen im Schnee."
    (result,) = translator.translate([text], beam_size=1)[0]
    (hyp,) = greedy_search(decoding_model, *source_tensors(decoding_tokenizer.encode([text])))
    assert result.tokens == hyp.tokens and result.score == hyp.score


def test_any_iterable_of_sentences_is_read_once(translator, decoding_val_sources):
    """A generator, a tuple, a map: each translates and scores as its list would (a generator
    read once to check it would be empty when translated)."""
    sources = decoding_val_sources[:4]
    targets = ["A man.", "", "Two dogs run.", "A woman"]
    expected = [n[0].text for n in translator.translate(sources, prefixes=targets)]
    got = translator.translate((s for s in sources), prefixes=iter(targets))
    assert [n[0].text for n in got] == expected
    assert [n[0].text for n in translator.translate(tuple(sources))] == [
        n[0].text for n in translator.translate(sources)
    ]
    scores = [r.log_prob for r in translator.score(sources, targets)]
    assert [r.log_prob for r in translator.score(iter(sources), map(str, targets))] == scores
    with pytest.raises(TypeError, match=r"texts: a list of sentences, got int"):
        translator.translate(5)


def test_from_checkpoint(decoding_checkpoint):
    translator = Translator.from_checkpoint(decoding_checkpoint)
    assert translator.device == torch.device("cpu")
    assert translator.translate(["Ein Hund läuft."])[0][0].text


def test_bad_arguments_are_refused(translator):
    with pytest.raises(ValueError, match="nbest"):
        translator.translate(["Ein Hund."], beam_size=2, nbest=3)
    with pytest.raises(ValueError, match="length_penalty: must be a finite number"):
        translator.translate([""], length_penalty=float("nan"))  # even with nothing to search
    with pytest.raises(ValueError, match=r"batch_size: must be an integer >= 1, got 1.5"):
        translator.translate(["Ein Hund."], batch_size=1.5)
    with pytest.raises(ValueError, match=r"max_src_len: must be an integer >= 1, got 0"):
        translator.translate(["Ein Hund."], max_src_len=0)
    with pytest.raises(TypeError, match=r"got one str \(translate\(\[text\]\)\)"):
        translator.translate("Ein Hund.")  # not nine one-character sentences
    with pytest.raises(TypeError, match=r"texts\[1\]: a str, got bytes"):
        translator.translate(["Ein Hund.", b"Zwei Katzen."])
