"""Every endpoint of the API, on the shipped models: what a good request gets (the errors:
test_api_errors.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.service.conftest import context_of, error_of


def test_api_health_ready_models(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert set(models) == {"attention", "attention-seed", "bengio"}
    assert models["attention"]["has_attention"] and not models["bengio"]["has_attention"]
    assert models["bengio"]["provider"] == "CPUExecutionProvider"
    assert models["attention"]["metrics"]["test"]["bits_per_character"] > 0
    assert models["attention"]["vocabulary"] == 8192 and models["attention"]["context"] == 256


def test_api_generate_greedy_is_deterministic(client):
    body = {
        "model": "attention",
        "prompt": "Capitu olhou para mim",
        "max_new_tokens": 8,
        "temperature": 0,
    }
    first, second = (
        client.post("/generate", json=body).json(),
        client.post("/generate", json=body).json(),
    )
    assert first["text"] == second["text"] and len(first["tokens"]) == 8
    assert first["finish_reason"] == "length"
    assert first["usage"] == {"prompt_tokens": 6, "completion_tokens": 8, "total_tokens": 14}
    assert "".join(t["token"] for t in first["tokens"]) == first["text"]
    assert all(t["logprob"] <= 0 for t in first["tokens"])


def test_api_generate_same_seed_same_output(client):
    body = {
        "model": "bengio",
        "prompt": "A vida é",
        "max_new_tokens": 12,
        "temperature": 1.0,
        "top_p": 0.9,
        "seed": 42,
    }
    a, b = client.post("/generate", json=body).json(), client.post("/generate", json=body).json()
    c = client.post("/generate", json={**body, "seed": 43}).json()
    assert a["text"] == b["text"] and a["text"] != c["text"]


def test_api_generate_logprobs_and_stop(client):
    body = {
        "model": "attention-seed",
        "prompt": "Capitu",
        "max_new_tokens": 20,
        "temperature": 0,
        "logprobs": 3,
    }
    full = client.post("/generate", json=body).json()
    assert all(len(t["top_logprobs"]) == 3 for t in full["tokens"])
    stop = full["text"][4:7]
    cut = client.post("/generate", json={**body, "stop": [stop]}).json()
    assert cut["finish_reason"] == "stop"
    assert cut["text"] == full["text"][: full["text"].find(stop)]


def test_api_generate_long_prompt_keeps_its_end(client):
    body = {"model": "bengio", "prompt": "Era uma vez " * 30, "max_new_tokens": 3}
    result = client.post("/generate", json=body).json()
    assert result["prompt_truncated"] is True
    assert result["usage"]["prompt_tokens"] == context_of(client, "bengio")


def test_api_next_token(client):
    result = client.post(
        "/next-token", json={"model": "attention", "prompt": "Capitu olhou", "top_k": 5}
    ).json()
    assert result["tokens"][0] == "<|endoftext|>" and len(result["top"]) == 5
    probs = [c["probability"] for c in result["top"]]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-9
    assert math.isclose(result["top"][0]["logprob"], math.log(probs[0]), rel_tol=1e-9)
    assert 0 < result["entropy_bits"] < 13


def test_api_attention_shapes_and_rows(client):
    result = client.post(
        "/attention", json={"model": "attention", "prompt": "Capitu olhou para mim"}
    ).json()
    n = len(result["tokens"])
    weights = result["attention"]
    assert (len(weights), len(weights[0]), len(weights[0][0]), len(weights[0][0][0])) == (
        6,
        6,
        n,
        n,
    )
    for row in weights[2][3]:
        assert abs(sum(row) - 1) < 1e-3
    one = client.post(
        "/attention", json={"model": "attention", "prompt": "Capitu olhou", "layer": 5, "head": 0}
    ).json()
    assert one["layers"] == [5] and one["heads"] == [0] and len(one["attention"]) == 1


def loop_attention(queries, keys, head: int, head_dim: int) -> list[list[float]]:
    """The course notebook's loop version: for each query, its dot product with every key up
    to it, scaled by 1 / sqrt(head_dim), then a softmax, one number at a time."""
    cols = range(head * head_dim, (head + 1) * head_dim)
    rows = []
    for i, q in enumerate(queries):
        scores = [sum(q[c] * k[c] for c in cols) / math.sqrt(head_dim) for k in keys[: i + 1]]
        top = max(scores)
        exps = [math.exp(s - top) for s in scores]
        rows.append([e / sum(exps) for e in exps] + [0.0] * (len(keys) - i - 1))
    return rows


@pytest.mark.parametrize(
    ("model", "layer"), [("attention-seed", None), ("attention", None), ("attention", 4)]
)
def test_api_attention_vectors_give_the_weights_by_loops(client, model, layer):
    """The queries and keys /attention returns are the ones its weights come from: loops over
    them give every head's weights within float32 rounding."""
    body = {"model": model, "prompt": "Não tive filhos, não transmiti", "vectors": True}
    if layer is not None:
        body["layer"] = layer
    result = client.post("/attention", json=body).json()
    n, dim = len(result["tokens"]), result["head_dim"]
    assert len(result["queries"]) == len(result["keys"]) == len(result["layers"])
    assert len(result["queries"][0]) == n and len(result["queries"][0][0]) == dim * len(
        result["heads"]
    )
    worst = 0.0
    for li in range(len(result["layers"])):
        for h in result["heads"]:
            loops = loop_attention(result["queries"][li], result["keys"][li], h, dim)
            served = result["attention"][li][h]
            worst = max(worst, float(np.abs(np.subtract(loops, served)).max()))
    assert worst < 1e-5, worst
    # unrounded: a weight with more than 5 decimals shows it
    assert any(round(w, 5) != w for row in result["attention"][0][0] for w in row)


def test_api_attention_vectors_are_asked_for(client):
    """Without vectors the answer is as it was (no queries or keys, 5 decimals); a model
    without attention refuses them as it refuses the weights."""
    plain = client.post("/attention", json={"model": "attention", "prompt": "Capitu"}).json()
    assert not {"queries", "keys", "head_dim"} & set(plain)
    assert all(round(w, 5) == w for row in plain["attention"][0][0] for w in row)
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert models["attention-seed"]["attention_vectors"] is True
    assert models["bengio"]["attention_vectors"] is False
    error_of(
        client.post("/attention", json={"model": "bengio", "prompt": "x", "vectors": True}),
        422,
        "no_attention",
        "model",
    )
    error_of(
        client.post("/attention", json={"model": "attention", "prompt": "x", "vectors": "yes"}),
        422,
        "invalid_field",
        "vectors",
    )


def test_api_attention_is_bounded(client):
    result = client.post(
        "/attention", json={"model": "attention-seed", "prompt": "palavra " * 200}
    ).json()
    assert result["truncated"] is True
    assert len(result["tokens"]) == context_of(client, "attention-seed")


def test_api_attention_errors(client):
    error_of(
        client.post("/attention", json={"model": "bengio", "prompt": "x"}),
        422,
        "no_attention",
        "model",
    )
    error_of(
        client.post("/attention", json={"model": "attention", "prompt": "x", "layer": 6}),
        404,
        "layer_not_found",
        "layer",
    )
    error_of(
        client.post("/attention", json={"model": "attention", "prompt": "x", "head": 9}),
        404,
        "head_not_found",
        "head",
    )


def test_api_score(client):
    text = "Não tive filhos, não transmiti a nenhuma criatura o legado da nossa miséria."
    result = client.post(
        "/score", json={"model": "attention", "text": text, "per_token": True}
    ).json()
    assert result["characters"] == len(text)
    assert len(result["token_logprobs"]) == result["tokens"]
    nll = -sum(t["logprob"] for t in result["token_logprobs"])
    assert math.isclose(nll, result["nll_nats"], rel_tol=1e-9)
    assert math.isclose(result["bits_per_character"], nll / math.log(2) / len(text), rel_tol=1e-9)
    plain = client.post("/score", json={"model": "attention", "text": text}).json()
    assert "token_logprobs" not in plain
    for answer in (result, plain):
        assert answer["seconds"] > 0, answer
        speed = answer["tokens"] / answer["seconds"]
        assert math.isclose(answer["tokens_per_second"], speed, rel_tol=1e-9), answer


def without_timing(answer: dict) -> dict:
    """A /score answer less what changes from one run to the next."""
    return {k: v for k, v in answer.items() if k not in ("seconds", "tokens_per_second")}


def test_api_score_attention_beats_bengio_on_machado(client):
    text = (
        "Capitu tinha os olhos de cigana oblíqua e dissimulada, e eu não sabia "
        "o que dizer, porque a vida é assim mesmo."
    )
    bpc = {
        m: client.post("/score", json={"model": m, "text": text}).json()["bits_per_character"]
        for m in ("attention", "bengio")
    }
    assert bpc["attention"] < bpc["bengio"], bpc


def test_api_tokenize(client):
    result = client.post("/tokenize", json={"text": "Não há coração"}).json()
    assert "".join(result["tokens"]) == "Não há coração"
    assert result["offsets"][0][0] == 0 and result["offsets"][-1][1] == len("Não há coração")
    assert len(result["ids"]) == len(result["tokens"]) == len(result["offsets"])


def test_api_end_of_text_in_a_prompt_is_a_document_boundary(client):
    """The text <|endoftext|> is the end-of-text token, as between the training documents: what
    comes before it is another document, which the Bengio model does not read across."""
    ids = client.post("/tokenize", json={"text": "fim.<|endoftext|>Capitu"}).json()["ids"]
    assert ids.count(0) == 1
    alone = {"model": "bengio", "prompt": "Capitu", "top_k": 5}
    after = alone | {"prompt": "Era uma vez um homem.<|endoftext|>Capitu"}
    alone, after = (client.post("/next-token", json=body).json() for body in (alone, after))
    # The model's n tokens (n >= 4): the end of the first text, the boundary, then the prompt.
    assert context_of(client, "bengio") >= len(alone["tokens"]) + 1 == 4
    assert after["tokens"][-len(alone["tokens"]) :] == alone["tokens"] != after["tokens"]
    assert [c["token"] for c in after["top"]] == [c["token"] for c in alone["top"]]
    for a, b in zip(after["top"], alone["top"], strict=True):
        assert math.isclose(a["logprob"], b["logprob"], abs_tol=1e-4)


def test_api_detokenize_inverts_tokenize(client):
    text = "Não há coração, disse Capitu 𝔄!"
    ids = client.post("/tokenize", json={"text": text}).json()["ids"]
    result = client.post("/detokenize", json={"ids": ids, "model": "bengio"})
    assert result.status_code == 200
    assert result.json()["text"] == text
    assert result.json()["tokens"] == client.post("/tokenize", json={"text": text}).json()["tokens"]
    # The 4-byte character is four byte-level tokens: cut after its first, no character.
    cut = ids[:-4]  # without "!" and the character's last three bytes
    assert client.post("/detokenize", json={"ids": cut}).json()["text"].endswith(" \ufffd")


def test_api_detokenize_bad_ids(client):
    error_of(client.post("/detokenize", json={"ids": [1, 8192]}), 404, "token_not_found", "ids")
    error_of(client.post("/detokenize", json={"ids": []}), 422, "invalid_field", "ids")
    error_of(client.post("/detokenize", json={"ids": [-1]}), 422, "invalid_field", "ids.0")
    error_of(client.post("/detokenize", json={"ids": ["a"]}), 422, "invalid_field", "ids.0")
    error_of(client.post("/detokenize", json={"ids": [1], "model": "gpt"}), 404, "model_not_found")


MACHADO = (
    "Não tive filhos, não transmiti a nenhuma criatura o legado da nossa miséria. Capitu tinha "
    "os olhos de cigana oblíqua e dissimulada, e eu não sabia o que dizer, porque a vida é "
    "assim mesmo: uma ópera, e o tenor e o barítono lutavam pelo soprano."
)


def test_api_score_window_defaults_to_the_models_own(client):
    """Asking for the model's own window scores exactly what the default does."""
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert models["attention"]["score_window"] == 256 and models["bengio"]["score_window"] == 128
    for name in ("attention", "bengio"):
        default = client.post("/score", json={"model": name, "text": MACHADO}).json()
        own = models[name]["score_window"]
        asked = client.post("/score", json={"model": name, "text": MACHADO, "window": own}).json()
        assert without_timing(asked) == without_timing(default)


def test_api_score_smaller_window_reads_less_context(client):
    """One token of context costs the attention model bits; the window and stride say so."""
    full = client.post("/score", json={"model": "attention", "text": MACHADO}).json()
    one = client.post("/score", json={"model": "attention", "text": MACHADO, "window": 1}).json()
    assert (one["window"], one["stride"]) == (1, 1)
    assert one["tokens"] == full["tokens"] and one["characters"] == full["characters"]
    assert one["bits_per_character"] > full["bits_per_character"] + 0.2, (one, full)
    eight = client.post("/score", json={"model": "attention", "text": MACHADO, "window": 8})
    assert (eight.json()["window"], eight.json()["stride"]) == (8, 4)


@pytest.mark.parametrize(("past", "same"), [(0, True), (51, True), (-1, False), (-2, False)])
def test_api_score_bengio_reads_its_n_tokens_from_2n_minus_3(client, past, same):
    """With windows of 2n - 3 tokens or more every token reads at least n, Bengio's whole
    context; with fewer, some read less (the window is 2n - 3 + past)."""
    window = 2 * context_of(client, "bengio") - 3 + past
    default = client.post("/score", json={"model": "bengio", "text": MACHADO}).json()
    asked = client.post(
        "/score", json={"model": "bengio", "text": MACHADO, "window": window}
    ).json()
    assert math.isclose(asked["nll_nats"], default["nll_nats"], rel_tol=1e-6) is same, (
        asked["nll_nats"],
        default["nll_nats"],
    )


def test_api_score_window_past_the_models_is_cut_to_it(client):
    """A window longer than the model's own scores with the model's own, and says so."""
    default = client.post("/score", json={"model": "attention", "text": MACHADO}).json()
    longer = client.post("/score", json={"model": "attention", "text": MACHADO, "window": 9999})
    assert longer.status_code == 200
    assert without_timing(longer.json()) == without_timing(default)
    error_of(
        client.post("/score", json={"model": "bengio", "text": "a b", "window": 0}),
        422,
        "invalid_field",
        "window",
    )
