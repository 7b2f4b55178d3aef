"""The LLM layer: Stratus's own client against a loopback OpenAI API (the fake is checked
against the real `openai` SDK in test_llm_http.py); the offline provider."""

from __future__ import annotations

import dataclasses
import math
import socket
import subprocess
import sys

import pytest

from shared_layer.errors import LLMRequestError, UpstreamError
from shared_layer.openai_config import (
    OFFLINE_PREFIX,
    cosine_similarity,
    create_chat_completion,
    create_embedding,
    get_client,
    validate_model,
)
from tests.conftest import ROOT
from tests.support.fake_openai import fake_embedding

HELLO = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hello there"},
]


def test_chat_completion_returns_the_servers_answer_and_usage(fake_openai):
    result = create_chat_completion(
        messages=HELLO, model="gpt-4o", temperature=0.2, max_tokens=50, user_id="u-1"
    )
    assert result.content == "echo: hello there"
    assert result.provider == "openai"
    assert result.model == "gpt-4o"
    assert (result.prompt_tokens, result.completion_tokens) == (4, 3)
    assert result.total_tokens == 7
    assert result.finish_reason == "stop"
    assert result.duration_ms > 0
    [request] = fake_openai.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer test-key"
    assert request.body["messages"] == HELLO
    assert request.body["temperature"] == 0.2
    assert request.body["max_tokens"] == 50
    assert request.body["user"] == "u-1"


def test_chat_completion_defaults_model_and_temperature_from_settings(fake_openai, settings_env):
    settings_env(OPENAI_MODEL="my-local-model", OPENAI_TEMPERATURE="1.5")
    result = create_chat_completion(messages=HELLO)
    assert result.model == "my-local-model"
    assert fake_openai.requests[0].body["temperature"] == 1.5
    assert "max_tokens" not in fake_openai.requests[0].body


@pytest.mark.parametrize("status", [429, 500, 503])
def test_rate_limits_and_server_errors_become_retryable_upstream_errors(fake_openai, status):
    fake_openai.fail_next(status)
    with pytest.raises(UpstreamError) as caught:
        create_chat_completion(messages=HELLO)
    assert caught.value.extra["upstream_status"] == status
    assert str(status) in caught.value.detail
    assert not isinstance(caught.value, LLMRequestError)


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_rejected_requests_become_permanent_llm_request_errors(fake_openai, status):
    fake_openai.fail_next(status)
    with pytest.raises(LLMRequestError) as caught:
        create_chat_completion(messages=HELLO)
    assert caught.value.extra["upstream_status"] == status
    assert caught.value.status == 502
    assert caught.value.slug == "llm-request-rejected"


def test_a_slow_server_times_out_as_a_retryable_upstream_error(fake_openai):
    fake_openai.delay_seconds = 1.0
    with pytest.raises(UpstreamError, match="timed out"):
        create_chat_completion(messages=HELLO, timeout=0.2)


def test_an_unreachable_server_is_a_retryable_upstream_error(settings_env):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings_env(
        LLM_PROVIDER="openai", OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1", OPENAI_MAX_RETRIES="0"
    )
    with pytest.raises(UpstreamError, match="could not connect"):
        create_chat_completion(messages=HELLO)


def test_the_clients_own_retries_follow_the_max_retries_setting(fake_openai, settings_env):
    settings_env(OPENAI_MAX_RETRIES="2")  # the fake's 429 says retry-after-ms: 10
    fake_openai.fail_next(429, times=2)
    assert create_chat_completion(messages=HELLO).content == "echo: hello there"
    assert len(fake_openai.requests) == 3


def test_the_client_is_cached_and_rebuilt_only_when_its_settings_change(fake_openai, settings_env):
    first = get_client()
    assert get_client() is first
    settings_env(OPENAI_MODEL="other-model")  # not a client setting
    assert get_client() is first
    settings_env(OPENAI_API_KEY="another-key")
    assert get_client() is not first
    create_chat_completion(messages=HELLO)
    assert fake_openai.requests[-1].headers["authorization"] == "Bearer another-key"


def test_offline_answers_are_deterministic_labelled_and_make_no_request(fake_openai, settings_env):
    settings_env(LLM_PROVIDER="offline")
    first = create_chat_completion(messages=HELLO, model="gpt-4o")
    again = create_chat_completion(messages=HELLO, model="gpt-4o")
    other = create_chat_completion(messages=[{"role": "user", "content": "something else"}])
    assert dataclasses.replace(again, duration_ms=first.duration_ms) == first
    assert first.provider == "offline"
    assert first.content.startswith(OFFLINE_PREFIX)
    assert "hello there" in first.content
    assert other.content != first.content
    assert other.content.startswith(OFFLINE_PREFIX)
    assert first.prompt_tokens > 0
    assert first.completion_tokens > 0
    assert fake_openai.requests == []


def test_without_key_or_base_url_the_provider_is_offline(settings_env):
    settings_env(LLM_PROVIDER="auto")
    assert create_chat_completion(messages=HELLO).provider == "offline"


def test_a_chat_completion_without_messages_is_rejected():
    with pytest.raises(LLMRequestError):
        create_chat_completion(messages=[])


def test_embeddings_come_from_the_server_decoded_from_base64(fake_openai):
    vector = create_embedding("a sentence", model="text-embedding-3-small")
    assert vector == pytest.approx(fake_embedding("a sentence"), abs=1e-6)
    assert fake_openai.requests[0].path == "/v1/embeddings"
    assert fake_openai.requests[0].body["model"] == "text-embedding-3-small"


def test_embedding_errors_are_translated(fake_openai):
    fake_openai.fail_next(500)
    with pytest.raises(UpstreamError):
        create_embedding("x")
    fake_openai.fail_next(400)
    with pytest.raises(LLMRequestError):
        create_embedding("x")


def test_offline_embeddings_are_deterministic_and_rank_related_text_higher():
    query = create_embedding("reset my account password")
    assert query == create_embedding("reset my account password")
    assert math.isclose(math.sqrt(sum(x * x for x in query)), 1.0)
    related = create_embedding("how do I reset a password")
    unrelated = create_embedding("weather forecast for tomorrow")
    assert cosine_similarity(query, related) > cosine_similarity(query, unrelated)


def test_cosine_similarity_of_known_vectors():
    assert cosine_similarity([1.0, 0.0], [2.0, 0.0]) == pytest.approx(1.0)
    assert cosine_similarity([1.0, 0.0], [0.0, 3.0]) == pytest.approx(0.0)
    assert cosine_similarity([1.0, 1.0], [-1.0, -1.0]) == pytest.approx(-1.0)
    assert cosine_similarity([0.0, 0.0], [1.0, 1.0]) == 0.0
    with pytest.raises(ValueError, match="length"):
        cosine_similarity([1.0], [1.0, 2.0])


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("gpt-4o-mini", True),
        ("ft:gpt-4o-mini:acme:custom:abc123", True),
        ("meta-llama/Llama-3.1-8B-Instruct", True),
        ("", False),
        (" gpt-4o", False),
        ("gpt 4o", False),
        ("x" * 101, False),
    ],
)
def test_validate_model_accepts_model_ids_and_rejects_other_text(name, valid):
    assert validate_model(name) is valid


def test_importing_the_llm_layer_imports_no_model_client():
    code = (
        "import sys, shared_layer.openai_config\n"
        "sys.exit('openai' in sys.modules or 'shared_layer.llm_http' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False).returncode == 0


def test_calling_the_model_never_imports_the_openai_sdk(fake_openai):
    code = (
        "import sys\n"
        "from shared_layer.openai_config import create_chat_completion, create_embedding\n"
        "reply = create_chat_completion(messages=[{'role': 'user', 'content': 'hi'}])\n"
        "assert reply.content == 'echo: hi', reply\n"
        "create_embedding('hi')\n"
        "sdk = sorted(m for m in sys.modules if m.split('.')[0] in ('openai', 'httpx'))\n"
        "sys.exit(f'imported {sdk}' if sdk else 0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, check=False, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(fake_openai.requests) == 2
