"""The FastAPI application: POST /v1/translate and /v1/score, GET /health, GET /v1/models,
GET / (the page).

Every error is JSON `{"error": "<one line naming the field>"}` with a 4xx/5xx status, and
the server keeps serving. The body is read here, within its byte limit, before any parsing,
so that an oversized or non-UTF-8 body never reaches the JSON parser.
"""

import asyncio
import codecs
import json
import sys
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from seq2seq.cli import output_text
from seq2seq.search import SAMPLING_DEFAULTS, output_limit
from seq2seq.serve.batcher import DynamicBatcher, QueueFull, WorkerStopped
from seq2seq.serve.schema import (
    Attention,
    Hypothesis,
    Limits,
    Score,
    ScoreRequest,
    ScoreResponse,
    TranslateRequest,
    TranslateResponse,
    Translation,
    error_message,
    quoted,
)
from seq2seq.translator import BEAM_SIZE, MAX_SRC_LEN, TranslationResult

STATIC = Path(__file__).parent / "static"
RETRY_AFTER_S = 1  # what a 503 asks a client to wait: about one batch's decoding time
Request_ = TypeVar("Request_", TranslateRequest, ScoreRequest)


class ErrorAnswer(Exception):
    """Raised anywhere in a handler: answered as `{"error": message}` with this status."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        self.status, self.message, self.headers = status, message, headers


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ErrorAnswer(413, f"body: {declared} bytes; this server takes at most {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ErrorAnswer(413, f"body: more than {limit} bytes, the most this server takes")
    return bytes(body)


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    # json keeps the last of two equal keys; the first would be lost without a word.
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise ErrorAnswer(400, f"body: the key {quoted(key)} appears twice in one object")
        try:  # JSON's "\\ud800" is a lone surrogate: no field has such a name, no text encodes it
            key.encode("utf-8")
        except UnicodeEncodeError:
            raise ErrorAnswer(400, f"body: the key {quoted(key)} is not valid Unicode") from None
        seen.add(key)
    return dict(pairs)


def parse_request(
    body: bytes, limits: Limits, request: type[Request_] = TranslateRequest
) -> Request_:
    # A UTF-8 byte order mark is not text (RFC 8259 lets a parser ignore it); files lose theirs.
    start = len(codecs.BOM_UTF8) if body.startswith(codecs.BOM_UTF8) else 0
    try:
        text = body[start:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = start + e.start
        raise ErrorAnswer(
            400, f"body: not valid UTF-8 (byte 0x{body[offset]:02x} at offset {offset})"
        ) from None
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        raise ErrorAnswer(400, f"body: not valid JSON ({e})") from None
    except RecursionError:  # the parser recurses once per level of nesting
        raise ErrorAnswer(400, "body: JSON nested too deeply") from None
    except ValueError:  # json.loads's only other ValueError: an integer Python will not convert
        raise ErrorAnswer(
            400, f"body: a number longer than {sys.get_int_max_str_digits()} digits"
        ) from None
    try:
        return request.model_validate(data, context={"limits": limits})
    except ValidationError as e:
        raise ErrorAnswer(422, error_message(e, request)) from None


def _check_attention_size(lengths: list[int], prefix_steps: list[int], limit: int) -> None:
    """Refuse, before decoding, attention that could outgrow `limit` weights: a sentence's
    weights are its source length times its output length (never shorter than its prefix can
    take, `Translator.prefix_steps`), EOS included in both."""
    most = sum(
        n * (max(output_limit(n), p) + 1) for n, p in zip(lengths, prefix_steps, strict=True)
    )
    if most > limit:
        raise ErrorAnswer(
            422,
            f"return_attention: up to {most:,} weights for these sentences; this server returns "
            f"at most {limit:,} (send fewer or shorter sentences, or leave it off)",
        )


def _json_body(request: type[TranslateRequest | ScoreRequest]) -> dict:
    """The OpenAPI description of a body that the handler reads (within its limit) and
    validates itself, so that FastAPI's own parsing never sees it."""
    content = {"application/json": {"schema": request.model_json_schema()}}
    return {"requestBody": {"required": True, "content": content}}


async def _client_gone(request: Request) -> None:
    """Returns once the client has closed its connection. After the body, the next message the
    server gives a request is its disconnect (or none, once the response is sent)."""
    while (await request.receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.1)  # not expected; and never a busy loop


async def _through(
    request: Request,
    batcher: DynamicBatcher,
    what: str,
    texts: list,
    lengths: list[int],
    options: dict,
) -> list:
    """The results of `batcher.submit(texts, lengths, **options)`, once the worker has them;
    ErrorAnswer 503 (with Retry-After) when the queue is full or the worker has stopped, 500
    when `what` failed. If the client leaves first, what is not decoded yet never will be."""
    try:
        future = batcher.submit(texts, lengths, **options)
    except QueueFull as e:
        raise ErrorAnswer(
            503, f"busy: {e}; retry later", {"Retry-After": str(RETRY_AFTER_S)}
        ) from None
    except WorkerStopped as e:
        raise ErrorAnswer(503, f"{e}; see the server log") from None
    results = asyncio.wrap_future(future)
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({results, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not results.done():  # the client left (or the server stops): cancels `future` too,
            results.cancel()  # and the worker drops the request's sentences not yet decoded
    if results.cancelled():  # nobody reads this answer; the log shows it
        raise ErrorAnswer(499, "the client closed the connection before its answer")
    try:
        return results.result()
    except WorkerStopped as e:
        raise ErrorAnswer(503, f"{e}; see the server log") from None
    except Exception as e:
        raise ErrorAnswer(500, f"{what} failed ({type(e).__name__}); see the server log") from None


def _check_pieces(field: str, counts: list[int], verb: str = "takes") -> None:
    """Refuse, before decoding, an item of `field` with more pieces than the model reads a
    source (MAX_SRC_LEN): a target to score or a prefix is never cut (a cut one would be
    another), so only this bounds its decoding and attention."""
    for i, n in enumerate(counts):
        if n > MAX_SRC_LEN:
            raise ErrorAnswer(
                422, f"{field}[{i}]: {n} pieces; this server {verb} at most {MAX_SRC_LEN}"
            )


def _check_pair_lengths(source: list[int], target: list[int], limits: Limits, attention: bool):
    """Refuse, before scoring, a pair longer than the model reads (`_check_pieces`: scoring
    never cuts), and with `attention`, more weights than `limits` allow: (source + EOS) x
    (target + EOS) a pair."""
    _check_pieces("source", source, "scores")
    _check_pieces("target", target, "scores")
    weights = sum((s + 1) * (t + 1) for s, t in zip(source, target, strict=True))
    if attention and weights > limits.max_attention_weights:
        raise ErrorAnswer(
            422,
            f"return_attention: {weights:,} weights for these pairs; this server returns at most "
            f"{limits.max_attention_weights:,} (send fewer or shorter pairs, or leave it off)",
        )


def _attention(result: TranslationResult) -> Attention:
    return Attention(
        src_pieces=result.src_pieces, tgt_pieces=result.tgt_pieces,
        weights=result.attention.tolist(),
    )


def _translation(nbest: list[TranslationResult], request: TranslateRequest) -> Translation:
    best = nbest[0]
    return Translation(
        text=output_text(best),
        score=best.score if request.return_scores else None,
        nbest=[
            Hypothesis(text=output_text(r), score=r.score if request.return_scores else None)
            for r in nbest
        ]
        if request.nbest > 1
        else None,
        attention=_attention(best) if request.return_attention else None,
        truncated=best.truncated,
    )


def create_app(batcher: DynamicBatcher, models: dict, limits: Limits) -> FastAPI:
    """`models`: what GET /v1/models answers (see serve.cli.describe_models)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        # uvicorn has answered every request by now; the worker ends once its queue is empty.
        await asyncio.to_thread(batcher.stop)

    app = FastAPI(
        title="seq2seq translation service",
        summary=f"{models['source_language']} -> {models['target_language']}",
        lifespan=lifespan,
    )

    @app.exception_handler(ErrorAnswer)
    async def error_answer(request: Request, e: ErrorAnswer) -> JSONResponse:
        return _error(e.status, e.message, e.headers)

    @app.exception_handler(HTTPException)  # 404, 405 ...: the same error format
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        return _error(e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(Exception)  # a fault of ours: still JSON; uvicorn logs the traceback
    async def internal_error(request: Request, e: Exception) -> JSONResponse:
        return _error(500, f"internal error ({type(e).__name__}); see the server log")

    @app.post(
        "/v1/translate",
        response_model=TranslateResponse,
        response_model_exclude_none=True,
        openapi_extra=_json_body(TranslateRequest),
    )
    async def translate(request: Request):
        """One translation per sentence of `text`, in order: the line `translate` prints."""
        body = await _read_body(request, limits.max_body_bytes)
        req = parse_request(body, limits)
        lengths = batcher.source_lengths(req.text)
        steps = [0] * len(req.text)  # the most output steps each prefix takes
        if req.prefix is not None:
            _check_pieces("prefix", batcher.pieces(req.prefix, "target"))
            steps = batcher.translator.prefix_steps(req.prefix)
        if req.return_attention:
            _check_attention_size(lengths, steps, limits.max_attention_weights)
        options = {**req.search_options(), "prefixes": req.prefix}
        results = await _through(request, batcher, "translation", req.text, lengths, options)
        return TranslateResponse(translations=[_translation(r, req) for r in results])

    @app.post(
        "/v1/score",
        response_model=ScoreResponse,
        response_model_exclude_none=True,
        openapi_extra=_json_body(ScoreRequest),
    )
    async def score(request: Request):
        """The model's log-probability of each target as the translation of its source, and
        the score `translate --scores` prints when its search finds that translation."""
        body = await _read_body(request, limits.max_body_bytes)
        req = parse_request(body, limits, ScoreRequest)
        source = batcher.pieces(req.source)
        _check_pair_lengths(source, batcher.pieces(req.target, "target"), limits,
                            req.return_attention)
        pairs = list(zip(req.source, req.target, strict=True))
        options = {"score": True, "length_penalty": req.length_penalty}
        lengths = [n + 1 for n in source]
        results = await _through(request, batcher, "scoring", pairs, lengths, options)
        return ScoreResponse(
            scores=[
                Score(
                    score=r.score, log_prob=r.log_prob, tokens=len(r.tgt_pieces),
                    attention=_attention(r) if req.return_attention else None,
                )
                for r in results
            ]
        )

    @app.get("/health")
    async def health():
        state = {
            "status": "ok" if batcher.stopped_by is None else "stopped",
            "queued": batcher.queued(),
            "requests_decoded": batcher.requests,
            "batches": batcher.batches,
        }
        return JSONResponse(state, status_code=200 if batcher.stopped_by is None else 503)

    @app.get("/v1/models")
    async def list_models():
        """Languages, model sizes and parameters, scores from a model folder's config.json."""
        defaults = {"beam_size": BEAM_SIZE, **SAMPLING_DEFAULTS}
        return {**models, "limits": asdict(limits), "defaults": defaults}

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    # HEAD, which monitors and `curl -I` send, as Starlette's own routes (the schema, /static)
    # answer it: FastAPI's answer 405 otherwise. Kept out of the schema, as GET's twin.
    for route in [r for r in app.routes if isinstance(r, APIRoute) and "GET" in r.methods]:
        app.add_api_route(route.path, route.endpoint, methods=["HEAD"], include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
