"""Stratus's own OpenAI-compatible client (shared_layer/llm_http.py) against the loopback fake,
and the fake against the real `openai` SDK, so both speak the wire format the SDK speaks."""

from __future__ import annotations

import threading
import time

import pytest

from shared_layer import llm_http
from shared_layer.errors import LLMRequestError, UpstreamError
from shared_layer.openai_config import create_chat_completion, create_embedding, get_client
from tests.support.fake_openai import fake_embedding

HELLO = [{"role": "user", "content": "hello there"}]


def chat_body(**changes: object) -> dict[str, object]:
    """A chat completion as OpenAI answers it, with `changes` laid over it."""
    body: dict[str, object] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "served-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hi"},
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16},
    }
    return body | changes


@pytest.fixture
def fast_backoff(monkeypatch):
    """Retries wait milliseconds, not the production half second and up."""
    monkeypatch.setattr(llm_http, "INITIAL_RETRY_DELAY", 0.001)


def test_requests_carry_the_key_our_user_agent_and_json(fake_openai):
    create_chat_completion(messages=HELLO)
    [request] = fake_openai.requests
    assert request.headers["Authorization"] == "Bearer test-key"
    assert request.headers["User-Agent"].startswith("Stratus/")
    assert request.headers["Content-Type"] == "application/json"
    assert "OpenAI-Organization" not in request.headers


def test_organization_and_project_headers_come_from_the_sdks_variables(fake_openai, monkeypatch):
    monkeypatch.setenv("OPENAI_ORG_ID", "org-1")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-1")
    create_chat_completion(messages=HELLO)
    headers = fake_openai.requests[0].headers
    assert (headers["OpenAI-Organization"], headers["OpenAI-Project"]) == ("org-1", "proj-1")


def test_without_a_key_no_authorization_header_is_sent(fake_openai, settings_env):
    settings_env(OPENAI_API_KEY="")
    create_chat_completion(messages=HELLO)
    assert "Authorization" not in fake_openai.requests[0].headers


def test_model_usage_and_finish_reason_are_read_from_the_answer(fake_openai):
    fake_openai.answer_next(200, chat_body())
    result = create_chat_completion(messages=HELLO, model="asked-model")
    assert (result.content, result.model, result.finish_reason) == ("hi", "served-model", "length")
    assert (result.prompt_tokens, result.completion_tokens) == (11, 5)


def test_an_answer_without_usage_model_or_content_still_counts(fake_openai):
    choice = {"index": 0, "message": {"role": "assistant", "content": None}}
    fake_openai.answer_next(200, chat_body(usage=None, model=None, choices=[choice]))
    result = create_chat_completion(messages=HELLO, model="asked-model")
    assert (result.content, result.model, result.finish_reason) == ("", "asked-model", None)
    assert (result.prompt_tokens, result.completion_tokens) == (0, 0)


def test_the_connection_is_kept_alive_between_calls(fake_openai):
    for _ in range(3):
        create_chat_completion(messages=HELLO)
    assert fake_openai.connections == 1


def test_each_thread_has_its_own_connection(fake_openai):
    threads = [threading.Thread(target=create_chat_completion, kwargs={"messages": HELLO})]
    threads.append(threading.Thread(target=create_embedding, args=("x",)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(fake_openai.requests) == 2
    assert fake_openai.connections == 2


def test_a_connection_the_server_closed_while_idle_is_reopened_without_a_retry(fake_openai):
    fake_openai.drop_connections = True  # OPENAI_MAX_RETRIES is 0 here
    for _ in range(3):
        assert create_chat_completion(messages=HELLO).content == "echo: hello there"
    assert (len(fake_openai.requests), fake_openai.connections) == (3, 3)


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503])
def test_retryable_statuses_are_upstream_errors_naming_status_and_message(fake_openai, status):
    fake_openai.fail_next(status)
    with pytest.raises(UpstreamError) as caught:
        create_chat_completion(messages=HELLO)
    assert not isinstance(caught.value, LLMRequestError)
    assert caught.value.extra == {"provider": "openai", "upstream_status": status}
    assert f"HTTP {status}: Simulated failure with status {status}." in caught.value.detail


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_other_client_errors_are_llm_request_errors(fake_openai, status):
    fake_openai.fail_next(status)
    with pytest.raises(LLMRequestError) as caught:
        create_chat_completion(messages=HELLO)
    assert f"HTTP {status}: Simulated failure" in caught.value.detail


def test_an_error_message_never_shows_the_api_key(fake_openai):
    fake_openai.answer_next(
        401, {"error": {"message": "Incorrect API key provided: test-key.", "code": "bad_key"}}
    )
    with pytest.raises(LLMRequestError) as caught:
        create_chat_completion(messages=HELLO)
    assert "test-key" not in caught.value.detail
    assert "Incorrect API key provided: <api key>." in caught.value.detail


def test_an_error_body_that_is_not_json_is_quoted_with_its_status(fake_openai):
    fake_openai.answer_next(502, b"<html><body>Bad   Gateway</body></html>")
    with pytest.raises(UpstreamError, match=r"HTTP 502: <html><body>Bad Gateway</body></html>"):
        create_chat_completion(messages=HELLO)


@pytest.mark.parametrize(
    "body",
    [
        b"not json at all",
        b"[1, 2, 3]",
        chat_body(choices=[]),
        chat_body(choices=[{"index": 0, "finish_reason": "stop"}]),
        chat_body(choices=[{"message": {"content": 42}}]),
        chat_body(usage={"prompt_tokens": "eleven", "completion_tokens": 5}),
    ],
    ids=["text", "array", "no-choices", "no-message", "content-not-text", "usage-not-counts"],
)
def test_a_success_with_a_malformed_body_is_an_llm_request_error(fake_openai, body):
    fake_openai.answer_next(200, body)
    with pytest.raises(LLMRequestError):
        create_chat_completion(messages=HELLO)


def test_retries_wait_and_then_succeed(fake_openai, settings_env, fast_backoff):
    settings_env(OPENAI_MAX_RETRIES="2")
    fake_openai.fail_next(503, times=2)
    assert create_chat_completion(messages=HELLO).content == "echo: hello there"
    assert len(fake_openai.chat_requests()) == 3


def test_retries_that_run_out_raise_the_last_error(fake_openai, settings_env, fast_backoff):
    settings_env(OPENAI_MAX_RETRIES="2")
    fake_openai.fail_next(500, times=3)
    with pytest.raises(UpstreamError, match="HTTP 500"):
        create_chat_completion(messages=HELLO)
    assert len(fake_openai.chat_requests()) == 3


def test_rejected_requests_are_not_retried(fake_openai, settings_env, fast_backoff):
    settings_env(OPENAI_MAX_RETRIES="2")
    fake_openai.fail_next(400)
    with pytest.raises(LLMRequestError):
        create_chat_completion(messages=HELLO)
    assert len(fake_openai.chat_requests()) == 1


def test_retry_after_is_waited_for(fake_openai, settings_env, fast_backoff):
    settings_env(OPENAI_MAX_RETRIES="1")
    fake_openai.answer_next(429, {"error": {"message": "slow down"}}, {"Retry-After": "0.3"})
    started = time.monotonic()
    assert create_chat_completion(messages=HELLO).content == "echo: hello there"
    assert time.monotonic() - started >= 0.3


def test_a_retry_after_beyond_the_cap_is_left_to_the_caller(fake_openai, settings_env):
    settings_env(OPENAI_MAX_RETRIES="2")
    wait = str(int(llm_http.MAX_RETRY_AFTER_SECONDS) + 1)
    fake_openai.answer_next(429, {"error": {"message": "come back later"}}, {"Retry-After": wait})
    with pytest.raises(UpstreamError, match="come back later"):
        create_chat_completion(messages=HELLO)
    assert len(fake_openai.chat_requests()) == 1


def test_the_servers_x_should_retry_false_is_obeyed(fake_openai, settings_env, fast_backoff):
    settings_env(OPENAI_MAX_RETRIES="2")
    fake_openai.answer_next(500, {"error": {"message": "boom"}}, {"x-should-retry": "false"})
    with pytest.raises(UpstreamError, match="boom"):
        create_chat_completion(messages=HELLO)
    assert len(fake_openai.chat_requests()) == 1


def test_a_timeout_is_retried_then_reported(fake_openai, settings_env, fast_backoff):
    settings_env(OPENAI_MAX_RETRIES="1", OPENAI_TIMEOUT_SECONDS="0.2")
    fake_openai.delay_seconds = 0.5
    with pytest.raises(UpstreamError, match=r"timed out: no answer within 0.2 s"):
        create_chat_completion(messages=HELLO)
    assert len(fake_openai.chat_requests()) == 2


def test_a_calls_own_timeout_applies_on_a_kept_alive_connection(fake_openai):
    create_chat_completion(messages=HELLO)  # opens the connection with the default timeout
    fake_openai.delay_seconds = 0.5
    with pytest.raises(UpstreamError, match="timed out"):
        create_chat_completion(messages=HELLO, timeout=0.2)


def test_a_base_url_that_is_not_http_is_a_permanent_error(settings_env):
    settings_env(LLM_PROVIDER="openai", OPENAI_BASE_URL="ftp://models.example/v1")
    with pytest.raises(LLMRequestError, match="OPENAI_BASE_URL"):
        get_client()


def test_https_is_verified_with_the_default_context(fake_openai, settings_env):
    settings_env(OPENAI_BASE_URL=fake_openai.base_url.replace("http://", "https://"))
    with pytest.raises(UpstreamError, match="could not connect"):  # the fake speaks plain HTTP
        create_chat_completion(messages=HELLO)
    context = llm_http._default_tls()
    assert context.check_hostname
    assert context.verify_mode.name == "CERT_REQUIRED"


def test_embeddings_accept_a_plain_float_list_too(fake_openai):
    fake_openai.answer_next(200, {"object": "list", "data": [{"embedding": [0.5, -1, 2.0]}]})
    assert create_embedding("x") == [0.5, -1.0, 2.0]
    assert fake_openai.requests[0].body["encoding_format"] == "base64"


@pytest.mark.parametrize(
    "data",
    [[], [{"embedding": "not base64!"}], [{"embedding": "AAAA"[:3] + "="}], [{"embedding": {}}]],
    ids=["empty", "not-base64", "not-float32s", "not-a-vector"],
)
def test_a_malformed_embedding_is_an_llm_request_error(fake_openai, data):
    fake_openai.answer_next(200, {"object": "list", "data": data})
    with pytest.raises(LLMRequestError):
        create_embedding("x")


def test_the_fake_and_our_client_speak_the_sdks_wire_format(fake_openai):
    """The real `openai` client and ours send the same request bodies to the fake and read the
    same answers from it: what the fake checks of our client holds for OpenAI's API."""
    import openai

    sdk = openai.OpenAI(api_key="test-key", base_url=fake_openai.base_url, max_retries=0)
    sdk_chat = sdk.chat.completions.create(
        model="gpt-4o", messages=HELLO, temperature=0.2, max_tokens=50, user="u-1"
    )
    ours = create_chat_completion(
        messages=HELLO, model="gpt-4o", temperature=0.2, max_tokens=50, user_id="u-1"
    )
    sdk_request, our_request = fake_openai.chat_requests()
    assert our_request.body == sdk_request.body
    assert our_request.path == sdk_request.path
    assert sdk_chat.choices[0].message.content == ours.content == "echo: hello there"
    assert sdk_chat.usage is not None
    assert (sdk_chat.usage.prompt_tokens, sdk_chat.usage.completion_tokens) == (
        ours.prompt_tokens,
        ours.completion_tokens,
    )
    assert sdk_chat.choices[0].finish_reason == ours.finish_reason

    sdk_vector = sdk.embeddings.create(input="a sentence", model="text-embedding-3-small")
    our_vector = create_embedding("a sentence", model="text-embedding-3-small")
    sdk_embed, our_embed = [r for r in fake_openai.requests if r.path == "/v1/embeddings"]
    assert our_embed.body == sdk_embed.body
    assert list(sdk_vector.data[0].embedding) == pytest.approx(our_vector, abs=1e-7)
    assert our_vector == pytest.approx(fake_embedding("a sentence"), abs=1e-6)

    fake_openai.fail_next(429)
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model="gpt-4o", messages=HELLO)
