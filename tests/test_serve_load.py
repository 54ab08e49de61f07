"""translate serve under load: 32 clients x 20 requests, good and bad mixed, greedy, beam and
sampling, on a real server."""

import json
from collections import Counter

import httpx
import pytest

pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")

from seq2seq.cli import output_text  # noqa: E402
from seq2seq.serve.load import run_clients  # noqa: E402
from seq2seq.serve.process import ServerProcess  # noqa: E402
from seq2seq.translator import Translator  # noqa: E402

pytestmark = pytest.mark.usefixtures("decoding_one_thread")

CLIENTS, REQUESTS = 32, 20
# The search options of the good requests, in turn: greedy, beam 3, sampling.
OPTIONS = ({"beam_size": 1}, {"beam_size": 3}, {"sampling": True, "seed": 1})
# Bad requests, each with its status and the start of its error message.
BAD = [
    (b"not json", 400, "body: not valid JSON"),
    (b'{"text": ["Ein \xc3\x28 Hund."]}', 400, "body: not valid UTF-8"),
    (b'{"text": ["a"], "beam": 3}', 422, '"beam": unknown field'),
    (b'{"text": ["a", "b", "c", "d", "e"]}', 422, "text: 5 sentences"),
    (b'{"text": ["a"], "beam_size": 0}', 422, "beam_size: must be from 1"),
    (b'{"text": []}', 422, "text: must hold at least one sentence"),
]


def _plan(client: int, sources: list[str]) -> list[tuple[bytes, tuple | None]]:
    """(body, what the answer must be) for each request of one client: every third is bad."""
    plan = []
    for i in range(REQUESTS):
        k = client * REQUESTS + i
        if k % 3 == 2:
            body, status, message = BAD[k % len(BAD)]
            plan.append((body, (status, message)))
        else:
            picked = [sources[(k * 7 + j) % len(sources)] for j in range(1 + k % 3)]
            body = json.dumps({"text": picked, **OPTIONS[k // 3 % len(OPTIONS)]}).encode()
            plan.append((body, None))
    return plan


def test_32_clients_mixed_requests(decoding_checkpoint, decoding_val_sources):
    translator = Translator.from_checkpoints([decoding_checkpoint])
    expected = [
        # output_text: what the service and `translate` answer (a sample may hold a "\x0c").
        dict(zip(decoding_val_sources, (output_text(r[0]) for r in translator.translate(
            decoding_val_sources, **options)), strict=True))
        for options in OPTIONS
    ]
    plans = [_plan(c, decoding_val_sources) for c in range(CLIENTS)]
    sent = [0] * CLIENTS

    def next_body(client):
        if sent[client] == REQUESTS:
            return None
        sent[client] += 1
        return plans[client][sent[client] - 1][0]

    args = ["-m", str(decoding_checkpoint), "--threads", "1", "--log-level", "warning",
            "--max-lines", "4"]
    with ServerProcess(args) as server:
        outcomes, _ = run_clients(f"{server.url}/v1/translate", CLIENTS, next_body, 120)
        health = httpx.get(f"{server.url}/health").json()
        after = httpx.post(f"{server.url}/v1/translate", json={"text": ["Ein Hund."]})
        assert server.stop() == 0, "".join(server.log)

    # Each client got one answer per request it planned, in its order: nothing lost or doubled.
    assert Counter(o.client for o in outcomes) == {c: REQUESTS for c in range(CLIENTS)}
    good = 0
    for client in range(CLIENTS):
        mine = [o for o in outcomes if o.client == client]
        assert [o.body for o in mine] == [body for body, _ in plans[client]]
        for outcome, (body, bad) in zip(mine, plans[client], strict=True):
            if bad:
                status, message = bad
                assert outcome.status == status, (body, outcome.answer)
                assert outcome.answer["error"].startswith(message), outcome.answer
            else:
                good += 1
                request = json.loads(body)
                options = OPTIONS.index({k: v for k, v in request.items() if k != "text"})
                assert outcome.status == 200, outcome.answer
                words = [t["text"] for t in outcome.answer["translations"]]
                assert words == [expected[options][s] for s in request["text"]]
    # The server decoded each good request once, in fewer batches than requests, and still works.
    assert health["requests_decoded"] == good and health["batches"] < good
    assert health["status"] == "ok" and health["queued"] == 0
    assert after.status_code == 200 and len(after.json()["translations"]) == 1
