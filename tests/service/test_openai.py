"""/v1/completions as OpenAI clients and tools send it: echo (and prompt log-probabilities),
token-id prompts, best_of, frequency and presence penalties, logit_bias, stream_options; and
the same penalties and bias on /generate and /compare."""

from __future__ import annotations

import json
from collections import Counter

import httpx
import pytest
from openai import NotFoundError, OpenAI

from bench.common import start_server

PROMPT = "Capitu olhou para mim"


def _complete(client, **body) -> dict:
    response = client.post("/v1/completions", json={"model": "attention", "prompt": PROMPT, **body})
    assert response.status_code == 200, response.text
    return response.json()


def _ids(client, text: str) -> list[int]:
    return client.post("/tokenize", json={"text": text}).json()["ids"]


def _ids_of(base: str, text: str) -> list[int]:
    return httpx.post(f"{base}/tokenize", json={"text": text}).json()["ids"]


def _check_offsets(text: str, logprobs: dict) -> None:
    """Each token's text sits at its offset, and the tokens join to the whole text."""
    for token, offset in zip(logprobs["tokens"], logprobs["text_offset"], strict=True):
        assert text[offset : offset + len(token)] == token, (token, offset, text)
    assert "".join(logprobs["tokens"]) == text


@pytest.mark.parametrize("model", ["attention", "bengio"])
def test_openai_echo_scores_the_prompt_as_score_does(client, model):
    """echo with max_tokens 0: the prompt comes back with each token's log-probability,
    the values /score gives it."""
    text = "Não tive filhos, não transmiti a nenhuma criatura o legado da nossa miséria."
    choice = _complete(client, model=model, prompt=text, max_tokens=0, echo=True, logprobs=0)[
        "choices"
    ][0]
    scored = client.post("/score", json={"model": model, "text": text, "per_token": True}).json()
    assert choice["text"] == text and choice["finish_reason"] == "length"
    expected = [t["logprob"] for t in scored["token_logprobs"]]
    assert choice["logprobs"]["token_logprobs"] == pytest.approx(expected, abs=1e-9)
    assert choice["logprobs"]["top_logprobs"] == [{}] * len(expected)
    _check_offsets(text, choice["logprobs"])


def test_openai_echo_puts_the_prompt_before_the_completion(client):
    plain = _complete(client, max_tokens=8, temperature=0, logprobs=2)["choices"][0]
    echoed = _complete(client, max_tokens=8, temperature=0, logprobs=2, echo=True)["choices"][0]
    assert echoed["text"] == PROMPT + plain["text"]
    prompt_tokens = len(_ids(client, PROMPT))
    lp = echoed["logprobs"]
    assert lp["tokens"][prompt_tokens:] == plain["logprobs"]["tokens"]
    assert lp["token_logprobs"][prompt_tokens:] == pytest.approx(
        plain["logprobs"]["token_logprobs"], abs=1e-9
    )
    # The top alternatives of every prompt position, the likeliest first.
    for token_logprob, top in zip(lp["token_logprobs"], lp["top_logprobs"], strict=True):
        assert len(top) == 2 and list(top.values()) == sorted(top.values(), reverse=True)
        assert token_logprob <= max(top.values()) + 1e-9
    _check_offsets(echoed["text"], lp)


def test_openai_echo_of_a_prompt_longer_than_the_context(client):
    """Past its context the model scores the prompt in overlapping windows, as /score does."""
    text = " ".join(["Capitu olhou para mim, e eu para ela."] * 12)  # over 8 tokens
    echoed = _complete(
        client, model="attention-seed", prompt=text, max_tokens=0, echo=True, logprobs=0
    )["choices"][0]
    scored = client.post(
        "/score", json={"model": "attention-seed", "text": text, "per_token": True}
    ).json()
    assert echoed["logprobs"]["token_logprobs"] == pytest.approx(
        [t["logprob"] for t in scored["token_logprobs"]], abs=1e-9
    )


def test_openai_token_id_prompts_complete_like_their_text(client):
    ids = _ids(client, PROMPT)
    options = dict(max_tokens=8, temperature=0)
    assert (
        _complete(client, prompt=ids, **options)["choices"][0]["text"]
        == (_complete(client, **options)["choices"][0]["text"])
    )
    both = _complete(client, prompt=[ids, _ids(client, "A vida é")], **options)
    assert [c["index"] for c in both["choices"]] == [0, 1]
    echoed = _complete(client, prompt=ids, max_tokens=0, echo=True, logprobs=0)["choices"][0]
    assert echoed["text"] == PROMPT
    _check_offsets(PROMPT, echoed["logprobs"])


def test_openai_best_of_returns_the_likeliest_per_token(client):
    """best_of 4, n 2: the two of the four seeds' completions with the highest mean
    log-probability, best first."""
    options = dict(model="bengio", max_tokens=6, temperature=1.0, logprobs=0)
    alone = []
    for k in range(4):
        choice = _complete(client, seed=40 + k, **options)["choices"][0]
        assert choice["finish_reason"] == "length", "an early end makes the mean unknowable here"
        values = choice["logprobs"]["token_logprobs"]
        alone.append((sum(values) / len(values), choice["text"]))
    best = _complete(client, seed=40, n=2, best_of=4, **options)
    assert [c["text"] for c in best["choices"]] == [t for _, t in sorted(alone, reverse=True)[:2]]
    assert [c["index"] for c in best["choices"]] == [0, 1]
    assert best["usage"]["completion_tokens"] == 12


def test_openai_best_of_below_n_means_n_and_streams_the_best(client):
    """best_of under n generates n; streamed, best_of sends the chosen completions once all
    are generated, the same as the plain answer; stream_options without stream is unread."""
    options = dict(model="bengio", max_tokens=5, temperature=1.0, seed=8)
    assert (
        _complete(client, n=3, best_of=2, **options)["choices"]
        == (_complete(client, n=3, **options)["choices"])
    )
    plain = _complete(client, n=2, best_of=4, stream_options={"include_usage": True}, **options)
    assert "usage" in plain and plain["object"] == "text_completion"
    body = {"prompt": PROMPT, "n": 2, "best_of": 4, "stream": True, **options}
    with client.stream("POST", "/v1/completions", json=body) as response:
        data = [line[5:].strip() for line in response.iter_lines() if line.startswith("data:")]
    assert data[-1] == "[DONE]"
    texts = {0: "", 1: ""}
    for chunk in map(json.loads, data[:-1]):
        texts[chunk["choices"][0]["index"]] += chunk["choices"][0]["text"]
    assert [texts[0], texts[1]] == [c["text"] for c in plain["choices"]]


def test_openai_frequency_penalty_stops_greedy_repetition(client):
    """Greedy 'A vida é' repeats itself; a frequency penalty makes it repeat less."""
    options = dict(prompt="A vida é", max_tokens=24, temperature=0, logprobs=0)
    plain = _complete(client, **options)["choices"][0]["logprobs"]["tokens"]
    penalised = _complete(client, frequency_penalty=2.0, **options)["choices"][0]["logprobs"]
    most = Counter(plain).most_common(1)[0][1]
    assert Counter(penalised["tokens"]).most_common(1)[0][1] < most, (plain, penalised)
    presence = _complete(client, presence_penalty=2.0, **options)["choices"][0]["logprobs"]
    assert presence["tokens"] != plain


def test_openai_logit_bias_bans_a_token(client):
    comma = _ids(client, ",")[0]
    options = dict(max_tokens=30, temperature=0, logprobs=0)
    plain = _complete(client, **options)["choices"][0]
    assert "," in plain["logprobs"]["tokens"]
    banned = _complete(client, logit_bias={str(comma): -100}, **options)["choices"][0]
    assert "," not in banned["logprobs"]["tokens"], banned["text"]


@pytest.mark.parametrize("model", ["attention", "bengio"])
def test_generate_logit_bias_forces_a_token(client, model):
    """/generate takes the same bias: +100 on one token makes every greedy token that one."""
    token = _ids(client, " vida")[0]
    body = {"model": model, "prompt": PROMPT, "max_new_tokens": 5, "temperature": 0}
    forced = client.post("/generate", json={**body, "logit_bias": {str(token): 100}}).json()
    assert [t["id"] for t in forced["tokens"]] == [token] * 5


def test_compare_takes_penalties_and_bias(client):
    body = {"prompt": "A vida é", "max_new_tokens": 12, "temperature": 0}
    plain = client.post("/compare", json=body).json()["results"]
    penalised = client.post("/compare", json={**body, "frequency_penalty": 2.0}).json()["results"]
    assert [r["completion"] for r in penalised] != [r["completion"] for r in plain]
    bad = client.post("/compare", json={**body, "logit_bias": {"8192": 1}})
    assert bad.status_code == 404 and bad.json()["error"]["field"] == "logit_bias"


@pytest.mark.parametrize(
    ("path", "changes", "field"),
    [
        ("/v1/completions", {"suffix": "fim"}, "suffix"),
        ("/v1/completions", {"logit_bias": {"-1": 5}}, "logit_bias.-1.[key]"),
        ("/v1/completions", {"logit_bias": {"12": 100.5}}, "logit_bias.12"),
        ("/v1/completions", {"logit_bias": {"abc": 1}}, "logit_bias.abc.[key]"),
        ("/v1/completions", {"logit_bias": {"012": 1}}, "logit_bias.012.[key]"),
        ("/v1/completions", {"prompt": []}, "prompt"),
        ("/v1/completions", {"prompt": ["texto", 5]}, "prompt"),
        ("/v1/completions", {"prompt": [[]]}, "prompt"),
        ("/v1/completions", {"frequency_penalty": 2.5}, "frequency_penalty"),
        ("/v1/completions", {"presence_penalty": -3}, "presence_penalty"),
        ("/v1/completions", {"max_tokens": -1}, "max_tokens"),
        ("/generate", {"frequency_penalty": "1"}, "frequency_penalty"),
        ("/generate", {"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
    ],
)
def test_openai_parameters_out_of_bounds_are_422(client, path, changes, field):
    body = {"model": "attention", "prompt": PROMPT, **changes}
    response = client.post(path, json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_field" and error["field"] == field, error
    assert client.app.state.admission.running == 0


@pytest.mark.parametrize(
    ("path", "changes", "field"),
    [
        ("/v1/completions", {"logit_bias": {"8192": 5}}, "logit_bias"),
        ("/v1/completions", {"prompt": [5, 8192]}, "prompt"),
        ("/v1/completions", {"prompt": [[5], [6, 99999]]}, "prompt"),
        ("/generate", {"logit_bias": {"9000": 1}}, "logit_bias"),
    ],
)
def test_openai_token_ids_outside_the_vocabulary_are_404(client, path, changes, field):
    """As for a layer the model lacks: the schema bounds ids, the model has 8,192 of them."""
    response = client.post(path, json={"model": "attention", "prompt": PROMPT, **changes})
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert error["type"] == "token_not_found" and error["field"] == field, error
    assert "0..8191" in error["message"]


def test_openai_models_list_and_one_model(client):
    listed = client.get("/v1/models").json()
    assert [m["id"] for m in listed["data"]] == ["attention", "attention-seed", "bengio"]
    one = client.get("/v1/models/attention-seed")
    assert one.status_code == 200
    assert one.json() == next(m for m in listed["data"] if m["id"] == "attention-seed")
    missing = client.get("/v1/models/gpt-4")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "model_not_found"
    assert "attention, attention-seed, bengio" in missing.json()["error"]["message"]


def test_openai_unknown_model_name_is_quoted_only_in_part(client):
    """A path segment is as long as the client likes; the 404 quotes its start and its length."""
    missing = client.get("/v1/models/" + "x" * 5000)
    message = missing.json()["error"]["message"]
    assert missing.status_code == 404 and len(message) < 300, len(message)
    assert "(5000 characters)" in message, message


def test_openai_stream_with_echo_logprobs_and_usage(client):
    """The stream carries what the plain answer does: echoed prompt, the completion, each
    token's logprobs at its offset, and with include_usage a last chunk of usage."""
    options = dict(max_tokens=6, temperature=0, echo=True, logprobs=1)
    plain = _complete(client, **options)
    body = {
        "model": "attention",
        "prompt": PROMPT,
        "stream": True,
        "stream_options": {"include_usage": True},
        **options,
    }
    with client.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        data = [line[5:].strip() for line in response.iter_lines() if line.startswith("data:")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]
    assert all(c["usage"] is None for c in chunks[:-1])
    text, tokens, values, offsets = "", [], [], []
    for chunk in chunks[:-1]:
        choice = chunk["choices"][0]
        text += choice["text"]
        if choice["logprobs"]:
            tokens += choice["logprobs"]["tokens"]
            values += choice["logprobs"]["token_logprobs"]
            offsets += choice["logprobs"]["text_offset"]
    expected = plain["choices"][0]
    assert text == expected["text"]
    assert tokens == expected["logprobs"]["tokens"]
    assert offsets == expected["logprobs"]["text_offset"]
    assert values == pytest.approx(expected["logprobs"]["token_logprobs"], abs=1e-9)
    assert chunks[-2]["choices"][0]["finish_reason"] in ("length", "stop")


@pytest.fixture(scope="module")
def server():
    base, proc = start_server()
    yield base
    proc.terminate()
    proc.wait(30)


def test_openai_client_sends_every_parameter(server):
    """The official client with every parameter of the legacy completions API that these
    models can honour, as tools such as LangChain's OpenAI LLM send them."""
    client = OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0)
    assert client.models.retrieve("bengio").id == "bengio"
    with pytest.raises(NotFoundError, match="no model named 'gpt-4'"):
        client.models.retrieve("gpt-4")
    completion = client.completions.create(
        model="attention",
        prompt=PROMPT,
        max_tokens=4,
        temperature=0.7,
        top_p=1,
        n=1,
        best_of=2,
        frequency_penalty=0,
        presence_penalty=0,
        logit_bias={},
        logprobs=1,
        echo=True,
        seed=3,
        stop=["\n"],
        suffix=None,
        user="reader-1",
    )
    choice = completion.choices[0]
    assert choice.text.startswith(PROMPT)
    assert len(choice.logprobs.tokens) == len(choice.logprobs.token_logprobs)
    chunks = list(
        client.completions.create(
            model="bengio",
            prompt=[PROMPT],
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    tokens = [c for c in chunks if c.choices and c.choices[0].finish_reason is None]
    assert chunks[-1].usage.completion_tokens == len(tokens) > 0
    # The prompt after an end-of-text token, cut to the model's context.
    models = {m["name"]: m for m in httpx.get(f"{server}/models").json()["models"]}
    seen = min(len(_ids_of(server, PROMPT)) + 1, models["bengio"]["context"])
    assert chunks[-1].usage.prompt_tokens == seen
