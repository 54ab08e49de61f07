"""translate serve: the same lines as `translate`, batching, errors, limits, SIGTERM."""

import codecs
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")

from fastapi.testclient import TestClient  # noqa: E402

from seq2seq.cli import main as translate_main  # noqa: E402
from seq2seq.cli import output_text  # noqa: E402
from seq2seq.search import output_limit  # noqa: E402
from seq2seq.serve.app import create_app  # noqa: E402
from seq2seq.serve.batcher import DynamicBatcher  # noqa: E402
from seq2seq.serve.cli import describe_models  # noqa: E402
from seq2seq.serve.process import ServerProcess  # noqa: E402
from seq2seq.serve.schema import Limits  # noqa: E402
from seq2seq.translator import Translator  # noqa: E402

pytestmark = pytest.mark.usefixtures("decoding_one_thread")

# Lines `translate` treats specially, besides ordinary sentences.
ODD_LINES = ["", "   ", "Ein Hund 🐕 läuft\u00a0schnell.", "ein " * 40, "\ufeffEin Mann."]
DEFAULT = Limits()
SMALL = Limits(max_lines=4, max_line_chars=50, max_body_bytes=2000, max_beam_size=6)


@pytest.fixture(scope="module")
def translator(decoding_checkpoint) -> Translator:
    return Translator.from_checkpoints([decoding_checkpoint])


def _client(
    translator, limits=DEFAULT, max_batch_tokens=4096, max_wait_ms=5.0, max_queue=64, **options
):
    batcher = DynamicBatcher(translator, max_batch_tokens, max_wait_ms, max_queue)
    app = create_app(batcher, describe_models(translator, ["tiny.ckpt"]), limits)
    return TestClient(app, **options)


@pytest.fixture(scope="module")
def client(translator):
    with _client(translator, SMALL) as c:  # `with`: runs the lifespan, i.e. the batcher's worker
        yield c


def _at_once(one, count: int) -> None:
    """one(0), ..., one(count - 1), each on a thread of its own, all started before any is
    waited for: concurrent requests."""
    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _translate(client, text, **options):
    response = client.post("/v1/translate", json={"text": text, **options})
    assert response.status_code == 200, response.text
    return response.json()["translations"]


def test_same_lines_as_translate(translator, decoding_checkpoint, decoding_val_sources, tmp_path):
    beam_size = 3  # beam search: its batches are where a neighbour could change a result
    lines = decoding_val_sources[:20] + ODD_LINES
    source = tmp_path / "in.de"
    source.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    cli = subprocess.run(
        [sys.executable, "-m", "seq2seq.cli", "-m", str(decoding_checkpoint), "-i", str(source),
         "--beam-size", str(beam_size)],
        capture_output=True, check=True,
    )
    expected = cli.stdout.decode("utf-8").split("\n")[:-1]
    assert len(expected) == len(lines)
    limits = Limits(max_lines=len(lines))
    with _client(translator, limits=limits, max_wait_ms=50) as client:
        # All lines in one request, and each line in its own request, all at once: batched
        # with different neighbours, the words must not change.
        together = [t["text"] for t in _translate(client, lines, beam_size=beam_size)]
        alone = [None] * len(lines)

        def one(i):
            alone[i] = _translate(client, [lines[i]], beam_size=beam_size)[0]["text"]

        _at_once(one, len(lines))
        assert client.get("/health").json()["batches"] < 1 + len(lines)  # some were batched
    assert together == expected
    assert alone == expected


def test_nbest_scores_and_attention(client, decoding_val_sources):
    [result] = _translate(
        client, [decoding_val_sources[3]], beam_size=4, nbest=3,
        return_scores=True, return_attention=True,
    )
    scores = [h["score"] for h in result["nbest"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert result["nbest"][0]["text"] == result["text"] and result["score"] == scores[0]
    attention = result["attention"]
    weights = attention["weights"]
    assert len(weights) == len(attention["tgt_pieces"]) > 1
    assert {len(row) for row in weights} == {len(attention["src_pieces"])}
    assert all(abs(sum(row) - 1) < 1e-4 for row in weights)  # a distribution over the source
    # An empty sentence has n empty entries too, as translate --nbest prints n empty lines.
    [empty] = _translate(client, [" "], beam_size=4, nbest=3, return_scores=True)
    assert empty["nbest"] == [{"text": "", "score": 0.0}] * 3
    plain = _translate(client, [decoding_val_sources[3]], beam_size=4)[0]
    assert set(plain) == {"text", "truncated"}  # nothing that was not asked for


def test_sampling_gives_what_translator_gives(translator, decoding_val_sources):
    """Each sentence's sample depends on it and the seed only: alone, together, and in the
    batches other requests share, the same as `Translator.translate`'s."""
    lines = decoding_val_sources[:12]
    options = {"sampling": True, "sampling_topk": 20, "temperature": 0.8, "seed": 5}
    expected = [output_text(n[0]) for n in translator.translate(lines, **options)]
    with _client(translator, max_wait_ms=50) as client:
        together = [t["text"] for t in _translate(client, lines, **options)]
        alone = [None] * len(lines)

        def one(i):
            alone[i] = _translate(client, [lines[i]], **options)[0]["text"]

        _at_once(one, len(lines))
        other_seed = _translate(client, lines, **{**options, "seed": 6})
        scored = _translate(client, lines[:1], return_scores=True, **options)[0]
    assert together == alone == expected
    assert sum(a != b["text"] for a, b in zip(expected, other_seed, strict=True)) >= 3
    assert scored["text"] == expected[0] and scored["score"] < 0


def test_prefixes_give_what_translator_gives(translator, decoding_val_sources):
    """Each translation begins with its prefix and is `Translator.translate`'s, alone and in
    batches shared with other requests; requests without a prefix are decoded as before."""
    lines = decoding_val_sources[:8]
    prefixes = ["Two dogs", "", "A man", "", "The", "", "A woman is", "Zwei"]
    expected = [
        output_text(n[0]) for n in translator.translate(lines, beam_size=3, prefixes=prefixes)
    ]
    plain = [output_text(n[0]) for n in translator.translate(lines, beam_size=3)]
    with _client(translator, max_wait_ms=50) as client:
        together = [t["text"] for t in _translate(client, lines, beam_size=3, prefix=prefixes)]
        alone, without = [None] * len(lines), [None] * len(lines)

        def one(i):
            alone[i] = _translate(client, [lines[i]], beam_size=3, prefix=[prefixes[i]])[0]["text"]
            without[i] = _translate(client, [lines[i]], beam_size=3)[0]["text"]

        _at_once(one, len(lines))
        greedy = _translate(client, lines[:1], beam_size=1, prefix=["Two cats"])[0]["text"]
        sampled = _translate(client, lines[:1], sampling=True, prefix=["Two cats"])[0]["text"]
    assert together == alone == expected
    assert without == plain
    assert all(t.startswith(p) for t, p in zip(together, prefixes, strict=True))
    assert greedy.startswith("Two cats") and sampled.startswith("Two cats")


def test_requests_with_and_without_a_prefix_share_a_batch(translator, decoding_val_sources):
    lines = decoding_val_sources[:2]
    expected = [
        output_text(translator.translate(lines[:1], beam_size=3, prefixes=["Two do"])[0][0]),
        output_text(translator.translate(lines[1:], beam_size=3)[0][0]),
    ]
    found = [None, None]

    def one(i):
        prefix = {"prefix": ["Two do"]} if i == 0 else {}
        found[i] = _translate(client, [lines[i]], beam_size=3, **prefix)[0]["text"]

    with _client(translator, max_wait_ms=1000) as client:  # the first waits for the second
        _at_once(one, 2)
        assert client.get("/health").json()["batches"] == 1
    assert found == expected


def test_bad_prefixes_are_refused_before_decoding(translator):
    with _client(translator, Limits(max_line_chars=3000)) as client:
        for prefix, message in (
            (["A"], "prefix: 1 items for 2 sentences of text"),
            ([], "prefix: must hold at least one sentence"),
            (["A", 3], "prefix[1]: Input should be a valid string"),
            (["A", "x" * 3001],
             "prefix[1]: 3001 characters; this server takes at most 3000 a sentence"),
            (["A", "a dog " * 200], "prefix[1]: 400 pieces; this server takes at most 250"),
        ):
            response = client.post("/v1/translate", json={"text": ["a", "b"], "prefix": prefix})
            assert (response.status_code, response.json()) == (422, {"error": message})
        assert client.get("/health").json()["requests_decoded"] == 0


def _score(client, source, target, **options):
    response = client.post("/v1/score", json={"source": source, "target": target, **options})
    assert response.status_code == 200, response.text
    return response.json()["scores"]


def test_scores_are_translators(translator, decoding_val_sources):
    """POST /v1/score gives Translator.score's numbers, in one request or one pair a request,
    while translations share the batcher."""
    sources = decoding_val_sources[:10]
    targets = ["A man is riding a bike.", "", "Two dogs play in the snow."] * 3 + ["A dog."]
    expected = translator.score(sources, targets, length_penalty=0.6)
    with _client(translator, max_wait_ms=50) as client:
        together = _score(client, sources, targets, length_penalty=0.6)
        alone, translated = [None] * len(sources), [None] * len(sources)

        def one(i):
            alone[i] = _score(client, [sources[i]], [targets[i]], length_penalty=0.6)[0]
            translated[i] = _translate(client, [sources[i]], beam_size=2)[0]["text"]

        _at_once(one, len(sources))
        [aligned] = _score(client, sources[:1], targets[:1], return_attention=True)
    assert translated == [n[0].text for n in translator.translate(sources, beam_size=2)]
    for got in (together, alone):
        assert [g["tokens"] for g in got] == [len(e.tgt_pieces) for e in expected]
        assert [g["log_prob"] for g in got] == pytest.approx([e.log_prob for e in expected],
                                                             abs=1e-5)
        assert [g["score"] for g in got] == pytest.approx([e.score for e in expected], abs=1e-5)
        assert all(set(g) == {"score", "log_prob", "tokens"} for g in got)
    attention = aligned["attention"]
    assert attention["tgt_pieces"] == expected[0].tgt_pieces
    assert len(attention["weights"]) == aligned["tokens"]
    assert {len(row) for row in attention["weights"]} == {len(attention["src_pieces"])}


@pytest.mark.parametrize(
    "body, message",
    [
        (b'{"source": ["a"]}', "target: required"),
        (b'{"source": ["a", "b"], "target": ["c"]}', "target: 1 sentences for 2 source"),
        (b'{"source": [], "target": []}', "source: must hold at least one sentence"),
        (b'{"source": ["a"], "target": ["' + b"b" * 51 + b'"]}', "target[0]: 51 characters"),
        (b'{"source": ["a"], "target": ["b"], "text": ["c"]}',
         '"text": unknown field (the fields are source, target, length_penalty, return_attention)'),
        (b'{"source": ["a"], "target": ["b"], "length_penalty": NaN}',
         "length_penalty: must be a finite number >= 0, got nan"),
        (b'["a"]', 'body: must be a JSON object such as {"source": ["..."], "target": ["..."]}'),
    ],
)
def test_bad_score_request(client, body, message):
    response = client.post("/v1/score", content=body)
    assert response.status_code == 422
    assert response.json()["error"].startswith(message), response.json()


def test_pairs_longer_than_the_model_reads_are_refused_before_scoring(translator):
    with _client(translator, limits=Limits(max_attention_weights=400)) as client:
        long = "ein Hund " * 200
        for source, target, message in (
            (long, "A dog.", "source[0]: "),
            ("Ein Hund.", "a dog " * 200, "target[0]: "),
        ):
            response = client.post("/v1/score", json={"source": [source], "target": [target]})
            assert response.status_code == 422
            assert response.json()["error"].startswith(message)
            assert response.json()["error"].endswith("pieces; this server scores at most 250")
        pair = {"source": ["ein Hund " * 10], "target": ["a dog " * 10]}
        response = client.post("/v1/score", json={**pair, "return_attention": True})
        assert response.status_code == 422
        assert response.json()["error"].startswith("return_attention: ")
        assert client.post("/v1/score", json=pair).status_code == 200  # without, it is scored
        assert client.get("/health").json()["requests_decoded"] == 1  # nothing else was


def test_lone_surrogates_and_over_long_sentences(translator):
    with _client(translator) as client:
        # JSON may carry a lone surrogate; it is read as U+FFFD, as `translate` reads bad bytes.
        body = b'{"text": ["Ein \\ud800 Hund.", "Ein \xef\xbf\xbd Hund."], "beam_size": 2}'
        response = client.post("/v1/translate", content=body)
        assert response.status_code == 200, response.text
        first, second = response.json()["translations"]
        assert first == second
        long = _translate(client, ["ein Hund " * 400], beam_size=1)[0]
        assert long["truncated"] is True


GOOD = b'{"text": ["Ein Mann."]}'


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b"Ein Mann.", 400, "body: not valid JSON"),
        (b'{"text": ["Ein \xff Mann."]}', 400, "body: not valid UTF-8 (byte 0xff at offset 15)"),
        (b'["Ein Mann."]', 422, "body: must be a JSON object"),
        (b"{}", 422, "text: required"),
        (b'{"text": "Ein Mann."}', 422, "text: Input should be a valid list"),
        (b'{"text": ["a", 3]}', 422, "text[1]: Input should be a valid string"),
        (b'{"text": ["a"], "file": "/etc/passwd"}', 422, '"file": unknown field (the fields are'),
        # A key is the client's: quoted (a line break stays in one line), and cut short.
        (b'{"text": ["a"], "a\\nb": 1}', 422, '"a\\nb": unknown field'),
        (b'{"text": ["a"], "' + b"k" * 900 + b'": 1}', 422,
         '"' + "k" * 40 + '" (the first 40 of 900 characters): unknown field'),
        (b'{"text": ["a"], "\\ud800": 1}', 400, 'body: the key "\\ud800" is not valid Unicode'),
        (b'{"text": []}', 422, "text: must hold at least one sentence"),
        (b'{"text": ["a", "b", "c", "d", "e"]}', 422, "text: 5 sentences; this server takes at"),
        (b'{"text": ["' + b"a" * 51 + b'"]}', 422, "text[0]: 51 characters; this server takes"),
        (b'{"text": ["' + b"a" * 1990 + b'"]}', 413, "body: 2004 bytes; this server takes at"),
        (b'{"text": ["a"], "beam_size": 0}', 422, "beam_size: must be from 1 to 6, got 0"),
        (b'{"text": ["a"], "beam_size": 7}', 422, "beam_size: must be from 1 to 6, got 7"),
        (b'{"text": ["a"], "beam_size": "5"}', 422, "beam_size: Input should be a valid integer"),
        (b'{"text": ["a"], "beam_size": 2, "nbest": 3}', 422, "nbest: need 1 <= nbest <="),
        (b'{"text": ["a"], "nbest": 0}', 422, "nbest: need 1 <= nbest"),
        (b'{"text": ["a"], "return_scores": "yes"}', 422, "return_scores: Input should be a valid"),
        (b'{"text": ["a"], "sampling": true, "beam_size": 5}', 422,
         "beam_size: does not apply with sampling"),
        (b'{"text": ["a"], "temperature": 0.5}', 422, "temperature: applies with sampling only"),
        (b'{"text": ["a"], "seed": 3, "sampling": false}', 422, "seed: applies with sampling only"),
        (b'{"text": ["a"], "sampling": true, "nbest": 2}', 422, "nbest: sampling draws one"),
        (b'{"text": ["a"], "sampling": true, "temperature": 0}', 422,
         "temperature: must be a finite number > 0, got 0.0"),
        (b'{"text": ["a"], "sampling": true, "sampling_topk": -2}', 422,
         "sampling_topk: must be at least 0, got -2"),
        (b'{"text": ["a"], "sampling": true, "seed": 1.5}', 422, "seed: Input should be"),
    ],
)
def test_bad_request(client, body, status, message):
    response = client.post("/v1/translate", content=body)
    assert (response.status_code, response.json()) == (status, {"error": response.json()["error"]})
    assert response.json()["error"].startswith(message), response.json()
    assert client.post("/v1/translate", content=GOOD).status_code == 200  # still serving


def test_body_over_limit_without_content_length(client):
    chunks = (b'{"text": ["' if i == 0 else b"a" * 500 for i in range(6))  # streamed: no length
    response = client.post("/v1/translate", content=chunks)
    assert response.status_code == 413
    assert response.json() == {"error": "body: more than 2000 bytes, the most this server takes"}


def test_json_that_python_chokes_on_or_would_read_lossily(translator):
    deep = b'{"text": ' + b"[" * 5000 + b"]" * 5000 + b"}"  # past the parser's recursion limit
    digits = b'{"text": ["a"], "beam_size": ' + b"9" * 5000 + b"}"  # int() refuses > 4300
    twice = b'{"text": ["Ein Mann."], "text": ["Eine Frau."]}'  # json.loads keeps only the last
    with _client(translator) as client:
        for body, message in [
            (deep, "body: JSON nested too deeply"),
            (digits, "body: a number longer than 4300 digits"),
            (twice, 'body: the key "text" appears twice in one object'),
        ]:
            response = client.post("/v1/translate", content=body)
            assert (response.status_code, response.json()) == (400, {"error": message})
        # A UTF-8 byte order mark is skipped, as in files; offsets still count from byte 0.
        assert _translate(client, ["Ein Mann."]) == client.post(
            "/v1/translate", content=codecs.BOM_UTF8 + GOOD
        ).json()["translations"]
        response = client.post("/v1/translate", content=codecs.BOM_UTF8 + b'{"text": ["\xff"]}')
        assert response.json() == {"error": "body: not valid UTF-8 (byte 0xff at offset 14)"}


def test_a_fault_of_the_service_is_still_a_json_error(translator):
    # raise_server_exceptions=False: the client gets the answer, as from uvicorn (which logs).
    with _client(translator, raise_server_exceptions=False) as client:

        @client.app.get("/fault")
        async def fault():
            raise RuntimeError("a fault in a handler")

        response = client.get("/fault")
        assert response.status_code == 500
        assert response.json() == {"error": "internal error (RuntimeError); see the server log"}
        assert client.post("/v1/translate", content=GOOD).status_code == 200


def test_a_model_that_fails_is_a_500_and_the_service_goes_on(decoding_checkpoint):
    broken = Translator.from_checkpoints([decoding_checkpoint])
    broken.model = broken.model.to("meta")  # weights without data: every decode raises
    with _client(broken) as client:
        for path, body, what in (
            ("/v1/translate", {"text": ["Ein Hund."]}, "translation"),
            ("/v1/score", {"source": ["Ein Hund."], "target": ["A dog."]}, "scoring"),
        ):
            response = client.post(path, json=body)
            assert response.status_code == 500
            assert response.json()["error"].startswith(f"{what} failed (")
            assert response.json()["error"].endswith("); see the server log")
        assert client.get("/health").json()["status"] == "ok"


def test_other_paths_answer_json_errors(client):
    assert client.get("/v1/translate").json() == {"error": "Method Not Allowed"}
    assert client.get("/nothing").status_code == 404
    assert client.get("/nothing").json() == {"error": "Not Found"}
    for path in ("/", "/health", "/v1/models", "/static/app.js", "/openapi.json"):  # curl -I
        head = client.head(path)
        assert (head.status_code, head.content) == (200, b""), path
        assert head.headers["content-type"] == client.get(path).headers["content-type"]


def test_models_health_page_schema(client):
    models = client.get("/v1/models").json()
    assert (models["source_language"], models["target_language"]) == ("de", "en")
    [model] = models["models"]
    assert model["parameters"] > 1000 and model["config"]["decoder_layers"] == 2
    assert models["limits"]["max_lines"] == SMALL.max_lines
    assert models["defaults"] == {"beam_size": 5, "sampling_topk": 0, "temperature": 1.0, "seed": 0}
    assert client.get("/health").json()["status"] == "ok"
    page = client.get("/")
    assert page.status_code == 200 and "<html" in page.text
    assert client.get("/static/app.js").status_code == 200
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/translate"]["post"]["requestBody"]
    assert "beam_size" in body["content"]["application/json"]["schema"]["properties"]
    body = schema["paths"]["/v1/score"]["post"]["requestBody"]
    assert "target" in body["content"]["application/json"]["schema"]["properties"]


def test_requests_arriving_together_share_a_batch(translator, decoding_val_sources):
    def burst(client, n=8, beams=(5,)):
        answers = [None] * n

        def one(i):
            answers[i] = _translate(
                client, [decoding_val_sources[i]], beam_size=beams[i % len(beams)]
            )[0]["text"]

        _at_once(one, n)
        return answers, client.get("/health").json()

    with _client(translator, max_wait_ms=300) as client:
        batched, health = burst(client)
        assert health["requests_decoded"] == 8 and health["batches"] <= 2
    with _client(translator, max_batch_tokens=1, max_wait_ms=0) as client:  # batching off
        alone, health = burst(client)
        assert health["requests_decoded"] == 8 and health["batches"] == 8
    assert batched == alone
    with _client(translator, max_wait_ms=300) as client:  # only equal options share a batch
        _, health = burst(client, beams=(1, 5))
        assert health["requests_decoded"] == 8 and 2 <= health["batches"] <= 4


def test_a_long_request_is_decoded_in_parts_that_take_turns(translator, decoding_val_sources):
    long, short = decoding_val_sources[:40], decoding_val_sources[40:41]
    pieces = translator.src_tokenizer.encode(long)
    budget = sum((len(p) + 1) * 2 for p in pieces) // 5  # beam 2: about five parts
    batcher = DynamicBatcher(translator, budget, max_wait_ms=0, max_queue=8)
    futures, finished = {}, []
    for name, texts in (("long", long), ("short", short)):  # both queued before the worker runs
        futures[name] = batcher.submit(texts, batcher.source_lengths(texts), beam_size=2, nbest=1)
        futures[name].add_done_callback(lambda _, name=name: finished.append(name))
    batcher.start()
    results = {name: future.result(timeout=120) for name, future in futures.items()}
    batcher.stop()
    # The short request came second and waited for one part of the long one, not for all.
    assert finished == ["short", "long"]
    assert batcher.batches >= 5 and batcher.requests == 2
    expected = translator.translate(long + short, beam_size=2)  # all at once
    got = results["long"] + results["short"]
    assert [r[0].text for r in got] == [r[0].text for r in expected]
    # float32 sums in other batch shapes: the same to about 1e-7
    assert [r[0].score for r in got] == pytest.approx([r[0].score for r in expected], abs=1e-5)


def test_attention_that_could_outgrow_its_limit_is_refused_before_decoding(translator):
    text = ["Ein Mann fährt Fahrrad."]
    n = len(translator.src_tokenizer.encode(text)[0]) + 1  # EOS
    one = n * (output_limit(n) + 1)  # the most weights its attention can hold
    with _client(translator, Limits(max_attention_weights=one)) as client:
        assert len(_translate(client, text, return_attention=True)[0]["attention"]["weights"])
        response = client.post("/v1/translate", json={"text": text * 2, "return_attention": True})
        assert (response.status_code, response.json()) == (422, {"error": (
            f"return_attention: up to {2 * one:,} weights for these sentences; this server "
            f"returns at most {one:,} (send fewer or shorter sentences, or leave it off)"
        )})
        assert _translate(client, text * 2)  # without attention: no limit
        # A prefix longer than the output limit makes the output, and its attention, longer:
        # its complete words' pieces, and a piece a byte of the word it ends in (" ", 1 byte,
        # after a space; " abc", 4 bytes).
        words = "a " * (output_limit(n) + 4)
        p = len(translator.tgt_tokenizer.encode([words])[0])
        assert p > output_limit(n)
        for prefix, steps in ((words, p + 1), (words + "abc", p + 4)):
            response = client.post(
                "/v1/translate", json={"text": text, "prefix": [prefix], "return_attention": True}
            )
            assert (response.status_code, response.json()["error"]) == (
                422, f"return_attention: up to {n * (steps + 1):,} weights for these sentences; "
                f"this server returns at most {one:,} (send fewer or shorter sentences, or leave "
                "it off)"
            )
        assert client.get("/health").json()["requests_decoded"] == 2  # the refused: never


def test_full_queue_answers_503_with_retry_after(translator):
    # The first request waits 1 s for company, holding the only place in the queue.
    with _client(translator, max_wait_ms=1000, max_queue=1) as client:
        first = {}
        thread = threading.Thread(target=lambda: first.update(r=client.post(
            "/v1/translate", json={"text": ["Ein Mann."]})))
        thread.start()
        deadline = time.monotonic() + 5
        while client.get("/health").json()["queued"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = client.post("/v1/translate", json={"text": ["Ein Hund."]})
        thread.join()
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert busy.json()["error"].startswith("busy: 1 requests are waiting already")
    assert first["r"].status_code == 200


def test_sigterm_finishes_in_flight_requests_and_exits_0(decoding_checkpoint, decoding_val_sources):
    # The request waits 1.5 s in the batcher, so SIGTERM surely comes while it is in flight.
    with ServerProcess(["-m", str(decoding_checkpoint), "--threads", "1",
                        "--max-wait-ms", "1500"]) as server:
        answer = {}

        def send():
            answer["r"] = httpx.post(
                f"{server.url}/v1/translate", json={"text": decoding_val_sources[:5]}, timeout=30
            )

        thread = threading.Thread(target=send)
        thread.start()
        deadline = time.monotonic() + 5
        while httpx.get(f"{server.url}/health").json()["queued"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        server.proc.terminate()
        thread.join()
        assert server.proc.wait(30) == 0, "".join(server.log)
        assert answer["r"].status_code == 200
        assert len(answer["r"].json()["translations"]) == 5
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/health")


def test_a_request_whose_client_leaves_is_not_decoded_further(
    decoding_checkpoint, decoding_val_sources
):
    # One sentence a batch: a request of 200 at beam 16 takes many batches. Its client hangs up
    # once the first are decoded; the rest are dropped, and the service goes on serving.
    args = ["-m", str(decoding_checkpoint), "--threads", "1", "--max-batch-tokens", "1"]
    with ServerProcess(args) as server:
        def health():
            return httpx.get(f"{server.url}/health").json()

        body = httpx.Request(
            "POST", f"{server.url}/v1/translate",
            json={"text": decoding_val_sources[:200], "beam_size": 16},
        )
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            head = f"POST /v1/translate HTTP/1.1\r\nHost: {host}\r\n" + "".join(
                f"{k}: {v}\r\n" for k, v in body.headers.items() if k.lower() != "host"
            )
            sock.sendall(head.encode() + b"\r\n" + body.read())
            deadline = time.monotonic() + 60
            while health()["batches"] < 3:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        while health()["queued"]:  # dropped at the next batch
            assert time.monotonic() < deadline
            time.sleep(0.02)
        left = health()
        time.sleep(1)
        assert health() == left and left["batches"] < 100 and left["requests_decoded"] == 0
        assert len(_translate(httpx.Client(base_url=server.url), ["Ein Hund."])) == 1
        assert server.stop() == 0, "".join(server.log)


def test_a_worker_that_stops_fails_its_requests_and_health(translator):
    # A wait past what a thread can wait (OverflowError): `translate serve` refuses it, but a
    # program may build its own DynamicBatcher. Its requests get a 503, not an endless wait.
    with _client(translator, max_wait_ms=1e13) as client:
        stopped = "the translation worker stopped (OverflowError); see the server log"
        for _ in range(2):  # the request that was waiting, and one after
            response = client.post("/v1/translate", json={"text": ["Ein Hund."]})
            assert (response.status_code, response.json()["error"]) == (503, stopped)
        health = client.get("/health")
        assert (health.status_code, health.json()["status"]) == (503, "stopped")


def test_bad_model_is_one_line_and_status_2(tmp_path, capsys):
    missing = tmp_path / "missing.ckpt"
    assert translate_main(["serve", "-m", str(missing)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"translate serve: error: {missing}") and error.count("\n") == 1


@pytest.mark.parametrize("wait", ["inf", "nan", "-1", "60001", "1e13"])
def test_max_wait_must_be_a_finite_number_of_ms(wait, capsys):
    with pytest.raises(SystemExit) as exit_:
        translate_main(["serve", "-m", "never-read.ckpt", "--max-wait-ms", wait])
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("translate serve: error: argument --max-wait-ms: must be "), line


def test_a_port_in_use_is_one_line_before_the_model_loads(capsys):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code = translate_main(["serve", "-m", "never-read.ckpt", "--port", str(port)])
    assert code == 2
    assert capsys.readouterr().err == (
        f"translate serve: error: cannot listen on 127.0.0.1:{port} (Address already in use)\n"
    )


@pytest.mark.parametrize(
    "option, message",
    [
        (["--port", "70000"], "argument --port: must be from 0 to 65535"),
        # An empty host (an unset variable in a script) would listen on every interface.
        (["--host", ""], "argument --host: must not be empty"),
    ],
)
def test_a_port_or_host_that_cannot_be_is_a_usage_error(option, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        translate_main(["serve", "-m", "never-read.ckpt", *option])
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"translate serve: error: {message}")


def test_models_reports_the_model_cards_scores(decoding_checkpoint, decoding_pairs, tmp_path):
    from seq2seq.commands.export import main as export

    src, ref = tmp_path / "test.de", tmp_path / "test.en"
    src.write_text("\n".join(decoding_pairs[0][:10]) + "\n", encoding="utf-8")
    ref.write_text("\n".join(decoding_pairs[1][:10]) + "\n", encoding="utf-8")
    folder = tmp_path / "model"
    args = [str(decoding_checkpoint), "--output", str(folder), "--beam-size", "1"]
    assert export([*args, "--eval-src", str(src), "--eval-ref", str(ref)]) == 0
    translator = Translator.from_checkpoints([str(folder)])
    [model] = describe_models(translator, [str(folder)])["models"]
    scores = {s["metric"]: s for s in model["scores"]}
    assert scores["bleu"]["dataset"] == "test" and scores["bleu"]["signature"].startswith("nrefs:1")
    assert describe_models(translator, [str(decoding_checkpoint)])["models"][0]["scores"] == []
