"""The LLM client: any OpenAI-compatible chat endpoint through the ``openai`` package, with an
on-disk response cache, retries with backoff, token/cost accounting and a budget.

- Retries: rate limits (429), server errors (5xx), timeouts and dropped connections are retried
  up to ``max_retries`` times with exponential backoff (``backoff_s * 2**attempt``, capped at 60 s,
  honouring a ``Retry-After`` header); then the request raises :class:`RequestFailed` and the
  caller marks the latent failed (never a score of 0). 400/404 (bad model name...) fail at once.
  401/403 abort the whole run with a :class:`SaebenchError` (every request would fail the same).
- Budget: ``max_tokens`` (prompt + completion tokens actually sent) and ``max_cost`` (USD, needs
  the price table) are checked before every request that is not a cache hit; once spent, requests
  raise :class:`BudgetExhausted` and the caller stops cleanly, keeping what is done. Up to
  ``concurrency`` requests already in flight may finish past the limit.
- Preflight: :meth:`LLMClient.check` refuses a remote endpoint without a key and an unreachable
  endpoint with one line naming the URL, before any work is spent; :meth:`LLMClient.check_logprobs`
  refuses, in one line, an endpoint whose replies carry no log-probabilities.
- Malformed replies (a 200 whose body is not JSON, not UTF-8, HTML, or JSON without the chat
  completion's ``choices[0].message``): counted (``malformed_replies``) and retried like a server
  error; when a request still gets none after its retries and the endpoint has never answered
  sensibly in this run, the run stops with one line naming the URL (every request would fail the
  same way); once it has answered well, a later malformed streak fails only that latent.
- Log-probabilities (:meth:`LLMClient.chat_logprobs`): ``max_tokens=1, logprobs=true,
  top_logprobs=k`` (OpenAI, vLLM: ``choices[0].logprobs.content[0].top_logprobs``, k <= 20). A
  well-formed reply without them (``transformers serve`` 5.x ignores both fields) is an error
  naming the URL and the alternatives, never a silent score.
"""

from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from saebench.autointerp.cache import ResponseCache
from saebench.errors import SaebenchError

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


class BudgetExhausted(Exception):
    """The token or cost budget is spent; no further requests are sent."""


class RequestFailed(Exception):
    """A request failed after its retries (or with a non-retryable error)."""


class MalformedReply(Exception):
    """The endpoint answered, but not with an OpenAI chat completion (retried, counted)."""


@dataclass
class LLMSettings:
    """Endpoint, concurrency, retry and budget settings of one run."""

    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 120.0
    max_retries: int = 5
    backoff_s: float = 1.0
    temperature: float = 0.0
    seed: int | None = 0
    max_tokens_budget: int | None = None
    max_cost: float | None = None
    price_prompt_per_mtok: float | None = None
    price_completion_per_mtok: float | None = None
    cache_dir: Path | None = None  # None: no response cache


@dataclass
class Usage:
    """What the run spent: requests sent, cache hits, retries, tokens and (with prices) cost."""

    requests: int = 0
    cached: int = 0
    retries: int = 0
    failed_requests: int = 0
    malformed_replies: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0
    missing_usage: int = 0
    wall_s: float = 0.0
    price: tuple[float | None, float | None] = field(default=(None, None), repr=False)

    @property
    def cost(self) -> float | None:
        p, c = self.price
        if p is None or c is None:
            return None
        return (self.prompt_tokens * p + self.completion_tokens * c) / 1e6

    def as_dict(self) -> dict[str, Any]:
        cost = self.cost
        return {
            "requests": self.requests,
            "cached_requests": self.cached,
            "retries": self.retries,
            "failed_requests": self.failed_requests,
            "malformed_replies": self.malformed_replies,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "cached_completion_tokens": self.cached_completion_tokens,
            "requests_without_usage": self.missing_usage,
            "cost_usd": None if cost is None else round(cost, 6),
            "request_wall_s": round(self.wall_s, 3),
        }


def is_local(base_url: str) -> bool:
    """Whether the endpoint is on this machine (no key needed)."""
    return (urlparse(base_url).hostname or "") in LOCAL_HOSTS


def resolve_key(base_url: str, env_name: str) -> str:
    """The API key from ``$env_name``; a placeholder for local servers; an error for remote ones."""
    key = os.environ.get(env_name, "")
    if key:
        return key
    if is_local(base_url):
        return "sk-local-no-key"
    raise SaebenchError(f"no API key for {base_url}: set ${env_name} (or name another variable with --llm-api-key-env)")


class LLMClient:
    """Thread-safe chat client: cache → budget check → request with retries → accounting."""

    def __init__(self, settings: LLMSettings) -> None:
        from openai import OpenAI

        if settings.max_cost is not None and (
            settings.price_prompt_per_mtok is None or settings.price_completion_per_mtok is None
        ):
            raise SaebenchError(
                "a cost budget needs prices: set autointerp.price_prompt_per_mtok and price_completion_per_mtok "
                "(USD per million tokens)"
            )
        self.settings = settings
        self.api_key = resolve_key(settings.base_url, settings.api_key_env)
        self._client = OpenAI(
            base_url=settings.base_url, api_key=self.api_key, max_retries=0, timeout=settings.timeout_s
        )
        self.cache = ResponseCache(settings.cache_dir) if settings.cache_dir is not None else None
        self.usage = Usage(price=(settings.price_prompt_per_mtok, settings.price_completion_per_mtok))
        self._lock = threading.Lock()
        self._exhausted = False

    # -- preflight --------------------------------------------------------------------------
    def check(self, timeout_s: float = 10.0) -> None:
        """Refuse an unreachable endpoint (any HTTP answer counts as reachable), before any work."""
        import httpx

        url = self.settings.base_url.rstrip("/") + "/models"
        try:
            with httpx.Client(timeout=timeout_s, trust_env=not is_local(self.settings.base_url)) as h:
                h.get(url, headers={"Authorization": f"Bearer {self.api_key}"})
        except httpx.HTTPError as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SaebenchError(
                f"LLM endpoint {self.settings.base_url} is not reachable ({reason}); start the server or fix "
                "--llm-base-url"
            ) from exc

    # -- budget -----------------------------------------------------------------------------
    def exhausted(self) -> bool:
        """Whether the budget is spent (then no new request is sent)."""
        s, u = self.settings, self.usage
        with self._lock:
            if s.max_tokens_budget is not None and u.prompt_tokens + u.completion_tokens >= s.max_tokens_budget:
                self._exhausted = True
            cost = u.cost
            if s.max_cost is not None and cost is not None and cost >= s.max_cost:
                self._exhausted = True
            return self._exhausted

    # -- requests ---------------------------------------------------------------------------
    def request(
        self, model: str, messages: list[dict[str, str]], max_tokens: int, top_logprobs: int | None = None
    ) -> dict[str, Any]:
        """The canonical request dict (what is sent and what keys the cache)."""
        req: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "max_tokens": int(max_tokens),
            "temperature": self.settings.temperature,
        }
        if self.settings.seed is not None:
            req["seed"] = self.settings.seed
        if top_logprobs is not None:
            req["logprobs"] = True
            req["top_logprobs"] = int(top_logprobs)
        return req

    def chat(self, model: str, messages: list[dict[str, str]], max_tokens: int) -> str:
        """The reply text of one chat completion (from the cache when the same request was made)."""
        req = self.request(model, messages, max_tokens)
        if self.cache is not None:
            hit = self.cache.get(req)
            if hit is not None:
                with self._lock:
                    self.usage.cached += 1
                    self.usage.cached_prompt_tokens += int(hit.get("usage", {}).get("prompt_tokens", 0))
                    self.usage.cached_completion_tokens += int(hit.get("usage", {}).get("completion_tokens", 0))
                return str(hit["content"])
        if self.exhausted():
            raise BudgetExhausted("budget spent")
        content, usage, _ = self._send(req)
        if self.cache is not None:
            self.cache.put(req, content, usage)
        return content

    def chat_logprobs(self, model: str, messages: list[dict[str, str]], top_k: int = 20) -> list[tuple[str, float]]:
        """The ``top_k`` candidates for the first reply token with their log-probabilities (cached)."""
        req = self.request(model, messages, 1, top_logprobs=top_k)
        if self.cache is not None:
            hit = self.cache.get(req)
            if hit is not None and isinstance(hit.get("top_logprobs"), list):
                with self._lock:
                    self.usage.cached += 1
                    self.usage.cached_prompt_tokens += int(hit.get("usage", {}).get("prompt_tokens", 0))
                    self.usage.cached_completion_tokens += int(hit.get("usage", {}).get("completion_tokens", 0))
                return [(str(t), float(lp)) for t, lp in hit["top_logprobs"]]
        if self.exhausted():
            raise BudgetExhausted("budget spent")
        content, usage, top = self._send(req)
        if top is None:
            raise SaebenchError(
                f"LLM endpoint {self.settings.base_url} returned no log-probabilities for model {model} (it ignores "
                "logprobs/top_logprobs, as transformers serve does); use one that returns them (vLLM, OpenAI), "
                "--llm-base-url embedded, or --set autointerp.scoring=text"
            )
        if self.cache is not None:
            self.cache.put(req, content, usage, top_logprobs=top)
        return top

    def check_logprobs(self, model: str, top_k: int = 20) -> None:
        """Preflight: one (cached) one-token request; refuses an endpoint that returns no log-probabilities."""
        try:
            self.chat_logprobs(model, [{"role": "user", "content": "Reply Yes or No: is water wet?"}], top_k)
        except RequestFailed as exc:
            raise SaebenchError(
                f"LLM endpoint {self.settings.base_url} refused a log-probability request for model {model} ({exc}); "
                "use an endpoint that returns logprobs, --llm-base-url embedded, or --set autointerp.scoring=text"
            ) from exc

    def _send(self, req: dict[str, Any]) -> tuple[str, dict[str, int], list[tuple[str, float]] | None]:
        import openai

        s = self.settings
        last: Exception | None = None
        for attempt in range(s.max_retries + 1):
            if attempt:
                with self._lock:
                    self.usage.retries += 1
            t0 = time.perf_counter()
            try:
                resp = self._client.chat.completions.create(**req)
            except (openai.AuthenticationError, openai.PermissionDeniedError) as exc:
                raise SaebenchError(
                    f"LLM endpoint {s.base_url} refused the key ({exc.status_code}); check ${s.api_key_env}"
                ) from exc
            except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError) as exc:
                last = exc
                self._sleep(attempt, exc)
                continue
            except openai.APIStatusError as exc:
                if exc.status_code in (408, 409) or exc.status_code >= 500:
                    last = exc
                    self._sleep(attempt, exc)
                    continue
                with self._lock:
                    self.usage.failed_requests += 1
                raise RequestFailed(f"HTTP {exc.status_code}: {_short(exc)}") from exc
            except (ValueError, TypeError, AttributeError, KeyError, openai.APIResponseValidationError) as exc:
                # a 200 whose body is not a chat completion: non-JSON (JSONDecodeError), non-UTF-8
                # (UnicodeDecodeError), or JSON the client could not read (pydantic's ValidationError)
                last = MalformedReply(f"unreadable body ({type(exc).__name__}: {_short(exc)})")
                with self._lock:
                    self.usage.malformed_replies += 1
                self._sleep(attempt, exc)
                continue
            finally:
                with self._lock:
                    self.usage.wall_s += time.perf_counter() - t0
            try:
                content, top = _read_completion(resp, "top_logprobs" in req)
            except MalformedReply as exc:
                last = exc
                with self._lock:
                    self.usage.malformed_replies += 1
                self._sleep(attempt, exc)
                continue
            u = getattr(resp, "usage", None)
            usage = {
                "prompt_tokens": _int(getattr(u, "prompt_tokens", 0)),
                "completion_tokens": _int(getattr(u, "completion_tokens", 0)),
            }
            with self._lock:
                self.usage.requests += 1
                self.usage.prompt_tokens += usage["prompt_tokens"]
                self.usage.completion_tokens += usage["completion_tokens"]
                self.usage.missing_usage += int(u is None)
            return content, usage, top
        with self._lock:
            self.usage.failed_requests += 1
            never_answered = self.usage.requests == 0
        if isinstance(last, MalformedReply) and never_answered:
            raise SaebenchError(
                f"LLM endpoint {s.base_url} never answered with a chat completion ({s.max_retries + 1} tries, "
                f"{last}); point --llm-base-url at an OpenAI-compatible /v1 endpoint"
            )
        raise RequestFailed(f"gave up after {s.max_retries} retries: {type(last).__name__}: {_short(last)}")

    def _sleep(self, attempt: int, exc: Exception) -> None:
        """Exponential backoff with jitter; a server's Retry-After wins when it is given."""
        if attempt >= self.settings.max_retries:
            return
        delay = min(60.0, self.settings.backoff_s * (2**attempt)) * (0.5 + random.random() / 2)
        response = getattr(exc, "response", None)
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after:
            try:
                delay = min(60.0, float(retry_after))
            except ValueError:
                pass
        time.sleep(delay)


def _int(v: Any) -> int:
    """A token count from a reply (0 when absent or not a number)."""
    try:
        return max(0, int(v or 0))
    except (TypeError, ValueError):
        return 0


def _read_completion(resp: Any, want_logprobs: bool) -> tuple[str, list[tuple[str, float]] | None]:
    """The reply text and (when asked) the first token's top log-probabilities; MalformedReply when
    ``resp`` is not a chat completion (the openai client returns HTML and other non-JSON bodies as a
    plain string, and wrong-schema JSON as a model missing its fields)."""
    if isinstance(resp, str | bytes):
        kind = "an HTML page" if "<html" in str(resp[:2000]).lower() else "a non-JSON body"
        raise MalformedReply(f"{kind} instead of a chat completion")
    choices = getattr(resp, "choices", None)
    if not isinstance(choices, list) or not choices:
        raise MalformedReply("a reply without choices")
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None) if message is not None else None
    if message is None or not (content is None or isinstance(content, str)):
        raise MalformedReply("a reply without choices[0].message.content")
    if not want_logprobs:
        return content or "", None
    lp = getattr(choices[0], "logprobs", None)
    items = getattr(lp, "content", None) if lp is not None else None
    if not items:
        return content or "", None
    top = getattr(items[0], "top_logprobs", None)
    if not isinstance(top, list) or not top:
        return content or "", None
    out = []
    for t in top:
        tok, val = getattr(t, "token", None), getattr(t, "logprob", None)
        if not isinstance(tok, str) or not isinstance(val, int | float):
            raise MalformedReply("top_logprobs entries without token/logprob")
        out.append((tok, float(val)))
    return content or "", out


def _short(exc: Exception | None) -> str:
    text = str(exc) if exc is not None else ""
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]
