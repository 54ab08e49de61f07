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
    """BLEU, chrF and TER with their signatures, all with sacreBLEU's default settings; and
    "bleu_lc", BLEU on lowercased text (`sacrebleu -lc`, still 13a-tokenized), the figure most
    papers on Multi30k report, so that a reader can set ours beside theirs."""
    _check(hypotheses, references)
    scores, signatures = {}, {}
    metrics = {"bleu": BLEU(), "bleu_lc": BLEU(lowercase=True), "chrf": CHRF(), "ter": TER()}
    for name, metric in metrics.items():
        scores[name] = metric.corpus_score(hypotheses, [references]).score
        signatures[name] = str(metric.get_signature())
    return {**scores, "signature": signatures}
