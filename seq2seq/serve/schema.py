"""The request and response bodies of POST /v1/translate and /v1/score, and the limits.

Validation is pydantic's (strict: no "5" for 5, no 1.0 for 1); `error_message` turns its
errors into the one line a client gets back, naming the field.
"""

import json
from dataclasses import dataclass
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from seq2seq.search import (
    SAMPLING_DEFAULTS,
    SAMPLING_TOPK,
    SEED,
    TEMPERATURE,
    check_applicable,
    check_search_options,
)
from seq2seq.translator import BEAM_SIZE


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; `translate serve` options of the same names."""

    max_lines: int = 256
    max_line_chars: int = 10_000
    max_body_bytes: int = 1_000_000
    max_beam_size: int = 16
    # With return_attention, weights a response may hold at most, counted before decoding as
    # each sentence's source length times its longest possible output: 256 sentences of 50
    # pieces fit; one of 250 pieces holds up to 97,000 (about 2 MB of JSON).
    max_attention_weights: int = 2_000_000


class TranslateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    example: ClassVar[str] = '{"text": ["..."]}'  # in the error for a body that is no object

    text: list[str] = Field(description="sentences, one per item, translated independently")
    beam_size: int = Field(BEAM_SIZE, description="1 = greedy search")
    nbest: int = Field(1, description="translations per sentence, best first (<= beam_size)")
    return_attention: bool = Field(False, description="the best translation's attention")
    return_scores: bool = Field(False, description="the search's score of each translation")
    sampling: bool = Field(
        False,
        description="draw each translation from the model's distribution instead of searching "
        "(beam_size and nbest do not apply)",
    )
    sampling_topk: int = Field(
        SAMPLING_TOPK,
        description="with sampling: draw from the k most probable tokens (0: all)",
    )
    temperature: float = Field(
        TEMPERATURE,
        description="with sampling: probabilities as p ** (1 / temperature)",
    )
    seed: int = Field(
        SEED,
        description="with sampling: a sentence's sample depends only on it and the seed",
    )
    prefix: list[str] | None = Field(
        None,
        description="text each translation must begin with, one per sentence (\"\": none): "
        "the search completes it (interactive translation)",
    )

    @model_validator(mode="after")
    def _within_limits(self, info: ValidationInfo) -> "TranslateRequest":
        limits: Limits = (info.context or {}).get("limits", Limits())
        _check_sentences("text", self.text, limits)
        if self.prefix is not None:
            _check_sentences("prefix", self.prefix, limits)
            if len(self.prefix) != len(self.text):
                raise ValueError(
                    f"prefix: {len(self.prefix)} items for {len(self.text)} sentences of text"
                )
        if not 1 <= self.beam_size <= limits.max_beam_size:
            raise ValueError(
                f"beam_size: must be from 1 to {limits.max_beam_size}, got {self.beam_size}"
            )
        # SearchOptionErrors: ValueErrors whose message names the option.
        check_applicable(self.sampling, self.model_fields_set)
        check_search_options(**self.search_options())
        return self

    def search_options(self) -> dict:
        """The `Translator.translate` arguments this request sets. With sampling, beam_size is
        1: the batcher budgets the rows the decoding carries, one a sentence."""
        return {
            "beam_size": 1 if self.sampling else self.beam_size,
            "nbest": self.nbest,
            "sampling": self.sampling,
            **{name: getattr(self, name) for name in SAMPLING_DEFAULTS},
        }


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    example: ClassVar[str] = '{"source": ["..."], "target": ["..."]}'

    source: list[str] = Field(description="sentences, one per item")
    target: list[str] = Field(description="a translation of each source sentence, to score")
    length_penalty: float = Field(1.0, description="GNMT alpha of `score` (0: the log-prob)")
    return_attention: bool = Field(False, description="the model's alignment of each pair")

    @model_validator(mode="after")
    def _within_limits(self, info: ValidationInfo) -> "ScoreRequest":
        limits: Limits = (info.context or {}).get("limits", Limits())
        _check_sentences("source", self.source, limits)
        _check_sentences("target", self.target, limits)
        if len(self.target) != len(self.source):
            raise ValueError(
                f"target: {len(self.target)} sentences for {len(self.source)} source sentences"
            )
        check_search_options(length_penalty=self.length_penalty)
        return self


def _check_sentences(name: str, sentences: list[str], limits: Limits) -> None:
    """A ValueError naming the field (or its item) unless `sentences` is within the limits."""
    if not sentences:
        raise ValueError(f"{name}: must hold at least one sentence")
    if len(sentences) > limits.max_lines:
        raise ValueError(
            f"{name}: {len(sentences)} sentences; this server takes at most {limits.max_lines}"
        )
    for i, line in enumerate(sentences):
        if len(line) > limits.max_line_chars:
            raise ValueError(
                f"{name}[{i}]: {len(line)} characters; this server takes at most "
                f"{limits.max_line_chars} a sentence"
            )


class Attention(BaseModel):
    src_pieces: list[str] = Field(description="columns: the source pieces read, EOS included")
    tgt_pieces: list[str] = Field(description="rows: the output pieces, EOS included")
    weights: list[list[float]] = Field(description="len(tgt_pieces) rows of len(src_pieces)")


class Hypothesis(BaseModel):
    text: str
    score: float | None = None


class Translation(BaseModel):
    text: str = Field(description="the best translation: the line `translate` prints")
    score: float | None = None
    nbest: list[Hypothesis] | None = Field(None, description="with nbest > 1: best first")
    attention: Attention | None = None
    truncated: bool = Field(description="the sentence was cut to its first pieces")


class TranslateResponse(BaseModel):
    translations: list[Translation] = Field(description="one per sentence, in request order")


class Score(BaseModel):
    score: float = Field(description="what the search reports for this output: the ranking score")
    log_prob: float = Field(description="the target's log-probability, EOS included")
    tokens: int = Field(description="the target's pieces, EOS included")
    attention: Attention | None = None


class ScoreResponse(BaseModel):
    scores: list[Score] = Field(description="one per pair, in request order")


def quoted(key: str, most: int = 40) -> str:
    """A key of the client's JSON as a JSON string (line breaks and lone surrogates escaped), its
    first `most` characters only, so that an error naming any key stays one short line."""
    if len(key) <= most:
        return json.dumps(key)
    return f"{json.dumps(key[:most])} (the first {most} of {len(key):,} characters)"


def _field(loc: tuple) -> str:
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else f".{part}" if name else str(part)
    return name


def error_message(error: ValidationError, request: type[TranslateRequest | ScoreRequest]) -> str:
    """The first of pydantic's errors validating a `request` as one line that names the field."""
    e = error.errors()[0]
    where = _field(e["loc"])
    if e["type"] == "value_error":  # our own checks above: their message names the field
        return str(e["ctx"]["error"])
    if e["type"] == "extra_forbidden":  # the client's own key: it may hold anything
        known = ", ".join(request.model_fields)
        return f"{quoted(e['loc'][-1])}: unknown field (the fields are {known})"
    if e["type"] == "model_type":
        return f"body: must be a JSON object such as {request.example}"
    if e["type"] == "missing":
        return f"{where}: required"
    return f"{where}: {e['msg']}"
