"""engine=openai against servers that answer but refuse: a bad key (401), an unknown model (404)
and a body that is not JSON each end in one line naming the server, with no retries. The
servers are real HTTP servers on 127.0.0.1 that answer every request the same way."""

from __future__ import annotations

import http.server
import threading

import pytest

from crescent.config import EngineConfig, ModelConfig, SamplingConfig
from crescent.engines import make_engine, release_engines
from crescent.errors import CrescentError

ANSWERS = {
    "401": (401, "application/json", b'{"error": {"message": "Incorrect API key provided"}}'),
    "404": (404, "application/json",
            b'{"error": {"message": "The model `m` does not exist.", "type": "NotFoundError"}}'),
    "html": (200, "text/html", b"<html>sign in to the proxy</html>"),
    "bad json": (200, "application/json", b"{not json"),
}
EXPECTED = {
    "401": r"refused the request \(401\): Incorrect API key provided$",
    "404": r"refused the request \(404\): The model `m` does not exist.$",
    "html": r"did not answer as an OpenAI-compatible server \(no JSON completion\)$",
    "bad json": r"did not answer as an OpenAI-compatible server \(no JSON completion\)$",
}


@pytest.fixture
def server(request):
    status, kind, body = ANSWERS[request.param]
    seen = []

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            seen.append(self.path)
            self.send_response(status)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}/v1", request.param, seen
    httpd.shutdown()


@pytest.mark.parametrize("server", list(ANSWERS), indirect=True)
def test_a_refusing_server_is_one_line_and_not_retried(server):
    url, case, seen = server
    engine = make_engine(EngineConfig(name="openai", options={
        "endpoints": [url], "served_model": "m", "max_retries": 3, "retry_backoff_s": 0.01}),
        ModelConfig(name="m"))
    try:
        with pytest.raises(CrescentError, match=f"^engine=openai: {url}/ {EXPECTED[case]}") as e:
            engine.chat([[{"role": "user", "content": "hi"}]], SamplingConfig(), n=1, seed=0)
    finally:
        release_engines()
    assert "\n" not in str(e.value)
    assert seen == ["/v1/chat/completions"]  # asked once: retrying would be refused the same
