"""Attack a running service the way a careless or hostile client would, and check it holds.

    python -m bench attack --base http://127.0.0.1:8000 --json benchmarks/attack-cpu.json

Classes of attack, each with several cases: bad bodies on every POST endpoint, raw HTTP that is
not HTTP, request heads over the limits, paths that climb out of /static, a Host header that
could be reflected, slow clients (a silent connection, a trickled head, a stalled body, a
stream nobody reads), floods of /tokenize beside a small /generate, bursts of the largest
answers the limits allow, and a mixed load of 32 clients. Every answer must be the service's
JSON error shape or a success; none may be a 5xx, plain text or a traceback, and no request may
go unanswered. At the end the service must be ready, with nothing in flight, and its resident
memory is compared with what it was before. Exit status 1 if anything failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.common import write_figures

POST_PATHS = [
    "/generate",
    "/next-token",
    "/attention",
    "/score",
    "/compare",
    "/tokenize",
    "/detokenize",
    "/v1/completions",
]

BAD_BODIES: list[bytes] = [
    b"{}",
    b"[]",
    b'"text"',
    b"null",
    b"1e999",
    b"{",
    b'{"model": }',
    b"\xff\xfe",
    b'{"model": "attention", "prompt": 5}',
    b'{"model": ["attention"], "prompt": "x"}',
    b'{"model": "nope", "prompt": "x"}',
    b'{"model": "../../etc/passwd", "prompt": "x"}',
    b'{"model": "attention", "prompt": "x", "max_new_tokens": -1}',
    b'{"model": "attention", "prompt": "x", "max_new_tokens": 1e12}',
    b'{"model": "attention", "prompt": "x", "temperature": "NaN"}',
    b'{"model": "attention", "prompt": "x", "top_k": 100000}',
    b'{"model": "attention", "prompt": "x", "logit_bias": {"99999999": 1}}',
    b'{"model": "attention", "prompt": "", "text": "", "ids": []}',
    b'{"model": "attention", "prompt": "\\u0000\\ud800", "text": "\\ud800"}',
    b'{"model": "attention", "prompt": [99999999], "ids": [-1]}',
    b'{"model": "attention", "prompt": "x", "stop": ["' + b"a" * 5000 + b'"]}',
    b"[" * 10_000 + b"]" * 10_000,
    b'{"model": "attention", "text": "' + b"x" * 300_000 + b'"}',
    b'{"model": "attention", "prompt": "x", "layer": 99, "head": -5}',
    b'{"models": ["attention", "attention", "nope"], "prompt": "x"}',
]

RAW_REQUESTS: list[bytes] = [
    b"GARBAGE\r\n\r\n",
    b"\r\n\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
    b"POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"POST /tokenize HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET / HTTP/1.1\r\n Host: x\r\n\r\n",
    b"GET http://evil/ HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: 1\r\n" * 5000 + b"\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n",
]

TRAVERSALS = [
    "/static/../../etc/passwd",
    "/static/%2e%2e/%2e%2e/etc/passwd",
    "/static//etc/passwd",
    "/static/..%2f..%2fetc/passwd",
    "/static/%00",
    "/static/../service/settings.py",
    "/..%2f..%2fetc/passwd",
    "/static/index.html/..",
]


# About the largest /v1/completions answer the default limits allow (MACHADO_MAX_ANSWER_ITEMS):
# three prompts of 2,000 ids echoed with 5 alternatives per token, 4 choices each.
LARGE_ANSWER = {"model": "bengio", "prompt": [[17] * 2000] * 3, "n": 4, "logprobs": 5, "echo": True}


class Attack:
    def __init__(self, base: str, key: str | None, model: str) -> None:
        self.base, self.model = base, model
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        host, port = base.removeprefix("http://").split(":")
        self.address = (host, int(port))
        self.statuses: Counter[str] = Counter()
        self.failures: list[str] = []
        self.cases = 0
        self.lock = threading.Lock()

    def record(self, case: str, status: int | None, body: bytes, content_type: str) -> None:
        """One answer: counted by status, and a failure if it is a 5xx, missing, not JSON where
        an error is, or shows a traceback. A 503 or 504 is a documented limit (not ready,
        shutting down, past the time limit), counted but not a failure."""
        with self.lock:
            self.cases += 1
            self.statuses[str(status)] += 1
            problem = None
            if status is None:
                problem = "no answer"
            elif status >= 500 and status not in (503, 504):  # 503/504: documented limits
                problem = f"status {status}"
            elif status >= 400 and not content_type.startswith("application/json"):
                problem = f"{status} answered as {content_type or 'nothing'}"
            elif b"Traceback" in body or b'File "/' in body:
                problem = "a traceback in the answer"
            if problem:
                self.failures.append(f"{case}: {problem}: {body[:120]!r}")

    def post(self, path: str, body: bytes, case: str, timeout: float = 120) -> httpx.Response:
        headers = {**self.headers, "content-type": "application/json"}
        try:
            answer = httpx.post(self.base + path, content=body, headers=headers, timeout=timeout)
        except httpx.HTTPError as error:
            self.record(case, None, str(error).encode(), "")
            raise
        self.record(
            case, answer.status_code, answer.content, answer.headers.get("content-type", "")
        )
        return answer

    def raw(self, request: bytes, case: str, receive_buffer: int | None = None) -> bytes:
        with socket.socket() as connection:
            if receive_buffer:
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            connection.settimeout(90)  # longer than any timeout of the service
            connection.connect(self.address)
            with contextlib.suppress(OSError):
                connection.sendall(request)
            data = b""
            try:
                while chunk := connection.recv(65536):
                    data += chunk
            except OSError:
                pass
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/") else None
        content_type = next(
            (x.split(":", 1)[1].strip() for x in lines[1:] if x.lower().startswith("content-type")),
            "",
        )
        self.record(case, status, body, content_type)
        return data

    def metric(self, name: str) -> float:
        for line in httpx.get(self.base + "/metrics", timeout=30).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    # The classes of attack.

    def bad_bodies(self) -> None:
        for path in POST_PATHS:
            for i, body in enumerate(BAD_BODIES):
                self.post(path, body, f"bad body {i} on {path}")
            for content_type in ("text/plain", "", "application/x-www-form-urlencoded"):
                answer = httpx.post(
                    self.base + path,
                    content=b"{}",
                    timeout=30,
                    headers={**self.headers, "content-type": content_type},
                )
                self.record(
                    f"content type {content_type!r} on {path}",
                    answer.status_code,
                    answer.content,
                    answer.headers.get("content-type", ""),
                )

    def raw_http(self) -> None:
        for i, request in enumerate(RAW_REQUESTS):
            self.raw(request, f"raw request {i} ({request[:20]!r})")

    def paths(self) -> None:
        for path in TRAVERSALS:
            answer = httpx.get(self.base + path, timeout=30)
            self.record(
                f"path {path}",
                answer.status_code,
                answer.content,
                answer.headers.get("content-type", ""),
            )
            if b"root:" in answer.content or b"BaseSettings" in answer.content:
                self.failures.append(f"path {path}: served a file outside /static")
        for path in ("/docs/", "/models/", "/static", "/v1/models/"):
            answer = httpx.get(self.base + path, headers={"host": "evil.example"}, timeout=30)
            self.record(
                f"host header on {path}",
                answer.status_code,
                answer.content,
                answer.headers.get("content-type", ""),
            )
            if "evil" in answer.headers.get("location", "") or b"evil" in answer.content:
                self.failures.append(f"{path}: the Host header came back in the answer")
        answer = httpx.options(
            self.base + "/generate",
            timeout=30,
            headers={"origin": "http://evil.example", "access-control-request-method": "POST"},
        )
        self.record(
            "CORS preflight from another origin",
            answer.status_code,
            answer.content,
            answer.headers.get("content-type", ""),
        )

    def slow_clients(self) -> None:
        """A silent connection and a trickled head are closed; a stalled body is a 408; a
        stream nobody reads is cut and its slot freed (within the send timeout)."""
        for case, request in [
            ("silent connection", b""),
            ("trickled head", b"POST /tokenize HTTP/1.1\r\nHo"),
        ]:
            started = time.monotonic()
            with socket.create_connection(self.address, timeout=120) as connection:
                connection.sendall(request)
                closed = connection.recv(100) == b""
            self.record(case, 200 if closed else None, b"", "")
            print(f"  {case}: closed after {time.monotonic() - started:.1f} s")
        self.raw(
            b"POST /tokenize HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{",
            "stalled body",
        )
        cut_before = self.metric('machado_connections_closed_total{reason="slow_reader"}')
        body = json.dumps(
            {**LARGE_ANSWER, "max_tokens": 512, "stream": True, "logit_bias": {"0": -100}}
        ).encode()
        head = (
            f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
            + "\r\n"
        ).encode()
        stalled = [socket.socket() for _ in range(8)]
        for connection in stalled:
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            connection.connect(self.address)
            connection.sendall(head + body)
        started = time.monotonic()
        while time.monotonic() - started < 120:
            cut = self.metric('machado_connections_closed_total{reason="slow_reader"}')
            if cut - cut_before >= 8 and self.metric("machado_in_flight_requests") == 0:
                break
            time.sleep(1)
        cut = self.metric('machado_connections_closed_total{reason="slow_reader"}') - cut_before
        for connection in stalled:
            connection.close()
        print(f"  8 streams never read: {cut:.0f} cut in {time.monotonic() - started:.0f} s")
        self.record("8 streams never read", 200 if cut == 8 else None, b"", "")
        answer = self.post(
            "/next-token",
            json.dumps({"model": self.model, "prompt": "Capitu"}).encode(),
            "a request after the slow readers",
        )
        if answer.status_code != 200:
            self.failures.append(f"after the slow readers: {answer.status_code}")

    def floods(self) -> dict:
        """40 /tokenize of 200,000 characters and 16 of 200,000 emoji at once, beside an
        8-token /generate: the flood waits its turn, the big answers are refused."""
        small = json.dumps(
            {"model": self.model, "prompt": "Capitu", "max_new_tokens": 8, "temperature": 0}
        ).encode()
        alone = time.perf_counter()
        self.post("/generate", small, "8-token generate, alone")
        alone = time.perf_counter() - alone
        texts = [json.dumps({"text": "Capitu olhou " * 15_385}).encode()] * 40 + [
            json.dumps({"text": "😀" * 200_000}).encode()
        ] * 16
        with ThreadPoolExecutor(len(texts) + 1) as pool:
            floods = [pool.submit(self.post, "/tokenize", t, "tokenize flood") for t in texts]
            time.sleep(0.5)
            beside = time.perf_counter()
            self.post("/generate", small, "8-token generate beside the flood")
            beside = time.perf_counter() - beside
            for flood in floods:
                flood.result()
        return {"generate_alone_s": round(alone, 3), "generate_beside_flood_s": round(beside, 3)}

    def big_answers(self) -> None:
        """Answers as large as the limits allow, eight at once, then ones over the limit."""
        near = json.dumps({**LARGE_ANSWER, "max_tokens": 128}).encode()
        over = json.dumps(
            {
                "model": "bengio",
                "prompt": [[17] * 8000] * 4,
                "max_tokens": 512,
                "n": 4,
                "logprobs": 5,
                "echo": True,
            }
        ).encode()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda b: self.post("/v1/completions", b, "largest answer"), [near] * 8))
            list(pool.map(lambda b: self.post("/v1/completions", b, "answer over"), [over] * 8))

    def mixed_load(self, seconds: float) -> None:
        bodies = [
            ("/generate", {"model": self.model, "prompt": "Capitu", "max_new_tokens": 32}),
            ("/next-token", {"model": self.model, "prompt": "Capitu olhou"}),
            ("/score", {"model": self.model, "text": "Capitu olhou para mim. " * 20}),
            ("/tokenize", {"text": "Capitu " * 100}),
            ("/v1/completions", {"model": self.model, "prompt": "Capitu", "max_tokens": 16}),
            ("/generate", {"model": self.model, "prompt": "x", "max_new_tokens": -1}),
        ]
        stop = time.monotonic() + seconds

        def client(k: int) -> None:
            i = k
            while time.monotonic() < stop:
                path, body = bodies[i % len(bodies)]
                with contextlib.suppress(httpx.HTTPError):
                    self.post(path, json.dumps(body).encode(), f"mixed {path}")
                i += 1

        with ThreadPoolExecutor(32) as pool:
            list(pool.map(client, range(32)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="http://127.0.0.1:8000", help="the service's URL")
    parser.add_argument("--api-key", help="the service's API key, if it has one")
    parser.add_argument("--model", default="attention", help="model for the load parts")
    parser.add_argument("--load-seconds", type=float, default=30, help="mixed load duration")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    attack = Attack(args.base.rstrip("/"), args.api_key, args.model)
    rss = {"before_mib": attack.metric("process_resident_memory_bytes") / 2**20}
    timings = {}
    for name in ("bad_bodies", "raw_http", "paths", "slow_clients", "floods", "big_answers"):
        started = time.monotonic()
        print(f"{name} ...", flush=True)
        timings.update(getattr(attack, name)() or {})
        rss[f"after_{name}_mib"] = attack.metric("process_resident_memory_bytes") / 2**20
        print(f"{name}: {time.monotonic() - started:.0f} s, RSS {rss[f'after_{name}_mib']:.0f} MiB")
    print("mixed load ...", flush=True)
    attack.mixed_load(args.load_seconds)
    time.sleep(2)
    rss["after_mib"] = attack.metric("process_resident_memory_bytes") / 2**20
    ready = httpx.get(attack.base + "/ready", timeout=30).status_code
    in_flight = attack.metric("machado_in_flight_requests")
    queued = attack.metric("machado_queued_requests")
    if ready != 200 or in_flight or queued:
        attack.failures.append(
            f"after the attack: /ready {ready}, {in_flight} in flight, {queued} queued"
        )
    result = {
        "base": attack.base,
        "cases": attack.cases,
        "answers_by_status": dict(sorted(attack.statuses.items())),
        "rss": {k: round(v, 1) for k, v in rss.items()},
        **timings,
        "ready_after": ready,
        "in_flight_after": in_flight,
        "failures": attack.failures,
    }
    print(json.dumps(result, indent=2, ensure_ascii=False))
    write_figures(result, args.json)
    return 1 if attack.failures else 0
