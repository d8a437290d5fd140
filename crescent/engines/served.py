"""OpenAI-compatible servers (`vllm serve`, one or several): requests sent as they are made."""

from __future__ import annotations

import os

from crescent.config import EngineConfig, ModelConfig
from crescent.engines.base import Engine, Generation
from crescent.engines.streaming import through_session
from crescent.errors import CrescentError
from crescent.infra.models import resolve_model
from crescent.options import OpenAIOptions
from crescent.registry import ENGINES


@ENGINES.register("openai")
class OpenAIEngine(Engine):
    """OpenAI-compatible servers (`vllm serve`, one or several): requests spread round-robin
    over `endpoints`, at most `concurrency` in flight, each with its own seed (engine.options,
    OpenAIOptions);
    a failed request is retried on the next endpoint with exponential backoff, and when every
    retry fails the call raises, after the stage has flushed what it finished before."""

    _RETRYABLE = ("APIConnectionError", "APITimeoutError", "InternalServerError",
                  "RateLimitError")

    def __init__(self, engine: EngineConfig, model: ModelConfig):
        self.cfg = _options(engine)
        # `vllm serve <path>` names the model by that path; another server may differ.
        self.model_path = self.cfg.served_model or resolve_model(model.name)

    @classmethod
    def preflight(cls, engine: EngineConfig) -> None:
        """Each endpoint an http(s) URL with a host, and a server there that answers within
        5 s (any HTTP status: a refusal is the stage's to report): a typo or a stopped server
        is found before the stage, not after a minute of retries."""
        import urllib.error
        import urllib.parse
        import urllib.request

        for url in _options(engine).endpoints:
            parts = urllib.parse.urlsplit(str(url))
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise CrescentError(f"engine.options.endpoints: {url!r} is not an http:// or "
                                    f"https:// URL (e.g. http://127.0.0.1:8000/v1)")
            try:
                urllib.request.urlopen(f"{str(url).rstrip('/')}/models", timeout=5).close()
            except urllib.error.HTTPError:
                pass  # a server answered
            except (OSError, ValueError) as e:
                reason = getattr(e, "reason", e)
                raise CrescentError(f"engine.options.endpoints: no server answers at {url} "
                                    f"({reason})") from None

    def session(self, sampling, n):
        return OpenAISession(self, sampling, n)

    def chat(self, conversations, sampling, n, seed):
        return through_session(self, list(conversations), sampling, n, seed)

    def complete(self, prompts, sampling, n, seed):
        return through_session(self, list(prompts), sampling, n, seed)


def _options(engine: EngineConfig) -> OpenAIOptions:
    options = OpenAIOptions(**engine.options)
    if not options.endpoints:
        raise CrescentError("engine=openai needs its servers: "
                            "+engine.options.endpoints=[http://host:port/v1,...]")
    return options


class OpenAISession:
    """Each request is sent when submitted, from an event loop in a thread of its own, with at
    most `concurrency` waiting on the servers; a poll returns those that have answered.
    Request i starts at endpoint i % endpoints and moves to the next one on each retry."""

    def __init__(self, engine: OpenAIEngine, sampling, n):
        import asyncio
        import queue
        import threading

        import openai

        cfg = engine.cfg
        self.engine, self.sampling, self.n = engine, sampling, n
        self.clients = [openai.AsyncOpenAI(base_url=url, api_key=os.environ.get("OPENAI_API_KEY", "none"),
                                           max_retries=0, timeout=cfg.request_timeout_s)
                        for url in cfg.endpoints]
        self.retryable = tuple(getattr(openai, name) for name in engine._RETRYABLE)
        self.refused = openai.APIStatusError  # 401, 404 (no such model), 400, ...
        self.slots = asyncio.Semaphore(cfg.concurrency)
        self.futures: dict = {}  # index -> its request's future
        self.answered: queue.Queue = queue.Queue()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    @property
    def in_flight(self) -> int:
        return len(self.futures)

    def submit(self, index, request) -> None:
        import asyncio

        future = asyncio.run_coroutine_threadsafe(self._send(index, request), self.loop)
        future.add_done_callback(lambda _: self.answered.put(index))
        self.futures[index] = future

    def poll(self) -> dict[int, Generation]:
        indices = [self.answered.get()]
        while not self.answered.empty():
            indices.append(self.answered.get_nowait())
        # A request that failed every retry raises its CrescentError here.
        return {i: self.futures.pop(i).result() for i in indices}

    def close(self) -> None:
        import asyncio

        for future in self.futures.values():
            future.cancel()
        self.futures = {}

        async def close_clients():
            for client in self.clients:
                await client.close()

        asyncio.run_coroutine_threadsafe(close_clients(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()

    async def _send(self, index, request) -> Generation:
        import asyncio

        cfg, given = self.engine.cfg, request.input
        common = {"model": self.engine.model_path, "n": self.n, "seed": request.seed,
                  "temperature": self.sampling.temperature, "top_p": self.sampling.top_p,
                  "max_tokens": self.sampling.max_tokens}
        async with self.slots:
            for attempt in range(cfg.max_retries + 1):
                client = self.clients[(index + attempt) % len(self.clients)]
                try:
                    if isinstance(given, str):
                        # vLLM's extension: the prompt holds its special tokens already.
                        reply = await client.completions.create(
                            prompt=given, extra_body={"add_special_tokens": False}, **common)
                    else:
                        reply = await client.chat.completions.create(messages=given, **common)
                except self.retryable as e:
                    if attempt == cfg.max_retries:
                        raise CrescentError(
                            f"engine=openai: request failed {attempt + 1} times, last on "
                            f"{client.base_url}: {type(e).__name__}: {e}") from None
                    await asyncio.sleep(min(60.0, cfg.retry_backoff_s * 2 ** attempt))
                    continue
                except self.refused as e:  # retrying would be answered the same way
                    raise CrescentError(f"engine=openai: {client.base_url} refused the request "
                                        f"({e.status_code}): {_reason(e)}") from None
                except ValueError:  # the body is not JSON: not an OpenAI-compatible server
                    reply = None
                if not getattr(reply, "choices", None):
                    raise CrescentError(f"engine=openai: {client.base_url} did not answer as an "
                                        f"OpenAI-compatible server (no JSON completion)")
                return _generation(reply, self.n)
        raise AssertionError("unreachable")


def _reason(error) -> str:
    """The server's own message (the body's `error.message`), on one line."""
    body = error.body if isinstance(error.body, dict) else {}
    text = str(body.get("message") or error.message).strip()
    return (text.splitlines() or [""])[0]


def _generation(reply, n: int) -> Generation:
    """The server reports completion tokens for all n choices together: split them evenly."""
    choices = sorted(reply.choices, key=lambda c: c.index)
    total = reply.usage.completion_tokens if reply.usage else 0
    per = [total // n + (1 if j < total % n else 0) for j in range(n)]
    texts = [(c.message.content if hasattr(c, "message") else c.text) or "" for c in choices]
    reasons = [getattr(c, "finish_reason", None) for c in choices]
    return Generation(texts=texts, completion_tokens=per,
                      prompt_tokens=reply.usage.prompt_tokens if reply.usage else 0,
                      finish_reasons=reasons if all(reasons) else None)
