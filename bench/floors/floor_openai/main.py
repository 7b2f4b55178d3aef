"""A floor for bench/coldstart.py --floors: one chat completion through the official `openai`
client (imported on the request), and nothing of Stratus: what calling the model through the
SDK costs a cold instance by itself. task_runner no longer pays it: it speaks the wire protocol
through shared_layer/llm_http.py (standard library), so this floor bounds the SDK, not Stratus."""

from __future__ import annotations

import os

import flask
import functions_framework


@functions_framework.http
def floor_openai(request: flask.Request) -> str:
    import openai

    client = openai.OpenAI(
        api_key=os.environ["OPENAI_API_KEY"], base_url=os.environ["OPENAI_BASE_URL"]
    )
    reply = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello."}]
    )
    return reply.choices[0].message.content or ""
