"""Corpus-level sacreBLEU scores on detokenized text, each with the signature that pins it down.

A score without its signature (tokenizer, casing, smoothing, version) cannot be compared with
anyone else's, so every function here returns both.
"""

from sacrebleu.metrics import BLEU, CHRF, TER


def _check(hypotheses: list[str], references: list[str]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(
            f"{len(hypotheses)} hypotheses but {len(references)} references: they must pair up"
        )
    if not hypotheses:
        raise ValueError("no sentences to score")


def bleu(hypotheses: list[str], references: list[str]) -> tuple[float, str]:
    """Corpus BLEU (sacreBLEU defaults: 13a tokenization, mixed case) -> (score, signature)."""
    _check(hypotheses, references)
    metric = BLEU()
    return metric.corpus_score(hypotheses, [references]).score, str(metric.get_signature())


def corpus_scores(hypotheses: list[str], references: list[str]) -> dict:
    """BLEU, chrF and TER with their signatures, all with sacreBLEU's default settings."""
    _check(hypotheses, references)
    scores, signatures = {}, {}
    for name, metric in (("bleu", BLEU()), ("chrf", CHRF()), ("ter", TER())):
        scores[name] = metric.corpus_score(hypotheses, [references]).score
        signatures[name] = str(metric.get_signature())
    return {**scores, "signature": signatures}
