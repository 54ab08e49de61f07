import math

import pytest

from seq2seq.metrics import bleu, corpus_scores

REFERENCES = ["The cat sat on the mat.", "A dog runs through the green grass."]


def test_perfect_match():
    scores = corpus_scores(REFERENCES, REFERENCES)
    assert scores["bleu"] == pytest.approx(100.0)
    assert scores["chrf"] == pytest.approx(100.0)
    assert scores["ter"] == pytest.approx(0.0)
    signature = scores["signature"]
    assert signature["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert signature["chrf"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:")
    assert signature["ter"].startswith("nrefs:1|case:lc|tok:tercom|")
    assert scores["bleu_lc"] == pytest.approx(100.0)
    assert signature["bleu_lc"].startswith("nrefs:1|case:lc|eff:no|tok:13a|smooth:exp|version:")


def test_lowercased_bleu_ignores_only_case():
    hypotheses = [r.upper() for r in REFERENCES]
    scores = corpus_scores(hypotheses, REFERENCES)
    assert scores["bleu_lc"] == pytest.approx(100.0)
    assert scores["bleu"] < 10


def test_known_values():
    hypotheses = ["The cat sat on a mat.", "A dog runs through green grass."]
    scores = corpus_scores(hypotheses, REFERENCES)
    # 13a tokens: 14 hypothesis, 15 reference; matching 1..4-grams 13/14, 9/12, 5/10, 2/8.
    precisions = (13 / 14) * (9 / 12) * (5 / 10) * (2 / 8)
    assert scores["bleu"] == pytest.approx(100 * math.exp(1 - 15 / 14) * precisions**0.25)
    # TER: two deleted "the" over 13 reference words (tercom keeps "mat." as one word).
    assert scores["ter"] == pytest.approx(100 * 2 / 13)
    assert 0 < scores["chrf"] < 100
    score, signature = bleu(hypotheses, REFERENCES)
    assert score == scores["bleu"] and signature == scores["signature"]["bleu"]


def test_unpaired_input_is_refused():
    with pytest.raises(ValueError, match="1 hypotheses but 2 references"):
        bleu(["only one"], REFERENCES)
