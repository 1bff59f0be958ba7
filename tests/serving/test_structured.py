"""Structured outputs on the session server (vLLM, tiny model): per request with any adapter,
streaming and not, mixed with unconstrained requests; a version's stored default; logit bias."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from click.testing import CliRunner

from cli.main import cli
from registry.basemodels import EMBEDDED_TINY
from registry.response_format import with_response_format
from registry.store import Registry
from tests.serving.fixtures import Server, train_tiny, wait_until

CONTACT = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "city": {"type": "string", "maxLength": 12},
        "intent": {"enum": ["pricing", "cancel", "support"]},
    },
    "required": ["name", "city", "intent"],
    "additionalProperties": False,
}
PROMPT = "Hello from Oslo! My name is Vera Lind and please send me your pricing."
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "contact", "schema": CONTACT, "strict": True}}


def _chat(server: Server, model: str, **kw: Any) -> httpx.Response:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 96,
        "temperature": 0,
        **kw,
    }
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)


def _content(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["message"]["content"])


def _stream_text(server: Server, model: str, **kw: Any) -> str:
    stream = server.client().chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=96,
        temperature=0,
        stream=True,
        **kw,
    )
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_json_schema_gives_schema_valid_json_streaming_and_not_and_leaves_the_batch_alone(
    server: Server,
) -> None:
    plain = _content(_chat(server, "support@1"))
    with ThreadPoolExecutor(4) as pool:
        constrained = [
            pool.submit(_chat, server, m, response_format=SCHEMA_FORMAT) for m in ("contact@1", EMBEDDED_TINY)
        ]
        unconstrained = pool.submit(_chat, server, "support@1")
        streamed = pool.submit(_stream_text, server, "contact@1", response_format=SCHEMA_FORMAT)
        answers = [_content(f.result()) for f in constrained]
        assert _content(unconstrained.result()) == plain  # the constraint stays with its own row
        answers.append(streamed.result())
    for text in answers:
        jsonschema.validate(json.loads(text), CONTACT)
    assert answers[2] == answers[0]  # streaming and not agree
    with pytest.raises(json.JSONDecodeError):
        json.loads(plain)  # what the tiny model says unconstrained is not JSON


def test_json_object_choice_regex_and_grammar_on_both_endpoints(server: Server) -> None:
    r = _chat(server, "contact@1", response_format={"type": "json_object"})
    text, finish = _content(r), r.json()["choices"][0]["finish_reason"]
    assert text.startswith("{")  # the random model need not close it within max_tokens: when it does,
    assert finish == "length" or isinstance(json.loads(text), dict)  # it is a JSON object
    choices = ["pricing", "cancel", "support"]
    r = _chat(server, "contact@1", structured_outputs={"choice": choices})
    assert _content(r) in choices
    r = httpx.post(
        server.url + "/v1/completions",
        json={
            "model": "support@1",
            "prompt": "Order",
            "max_tokens": 12,
            "temperature": 0,
            "structured_outputs": {"regex": "[0-9]{5}"},
        },
        timeout=120,
    )
    assert r.status_code == 200, r.text
    assert re.fullmatch("[0-9]{5}", r.json()["choices"][0]["text"])
    grammar = 'root ::= "yes" | "no"'
    assert _content(_chat(server, "support@1", structured_outputs={"grammar": grammar})) in ("yes", "no")
    streamed = server.client().completions.create(
        model="contact@1",
        prompt="Intent:",
        max_tokens=8,
        temperature=0,
        stream=True,
        extra_body={"structured_outputs": {"choice": choices}},
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) in choices


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "objekt"}},
                }
            },
            "response_format.json_schema.schema",
        ),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"structured_outputs": {"regex": "(unclosed"}}, "structured_outputs.regex"),
        ({"structured_outputs": {"grammar": "root ::= ("}}, "structured_outputs.grammar"),
        ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
        ({"logit_bias": {"999999999": 5}}, "logit_bias"),
    ],
)
def test_a_constraint_the_backend_cannot_compile_is_a_400_naming_it(
    server: Server, extra: dict[str, Any], param: str
) -> None:
    for stream in (False, True):
        r = _chat(server, "contact@1", stream=stream, **extra)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == param and err["type"] == "invalid_request_error", err


def test_a_version_with_a_stored_schema_answers_json_without_a_response_format(
    server: Server, adapters: tuple[Path, dict[str, str]]
) -> None:
    reg = Registry(adapters[0])
    src = reg.get(adapters[1]["contact"])
    copy = reg.push("contactfmt", src.path, src.lineage)
    v = with_response_format(reg, copy.ref, SCHEMA_FORMAT)
    assert v.ref == "contactfmt@2" and v.parent == 1
    reg.set_alias(v.ref, "prod")
    wait_until(lambda: _chat(server, "contactfmt:prod").status_code == 200, 5)
    jsonschema.validate(json.loads(_content(_chat(server, "contactfmt:prod"))), CONTACT)
    jsonschema.validate(json.loads(_stream_text(server, "contactfmt:prod")), CONTACT)
    # the request's own response_format wins: text is the adapter's unconstrained answer
    text = _content(_chat(server, "contactfmt:prod", response_format={"type": "text"}))
    assert text == _content(_chat(server, src.ref))
    choice = _content(_chat(server, "contactfmt:prod", structured_outputs={"choice": ["a", "b"]}))
    assert choice in ("a", "b")


def test_a_version_trained_with_a_response_format_answers_schema_valid_json_by_default(
    server: Server, adapters: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    schema = tmp_path / "contact.schema.json"
    schema.write_text(json.dumps(CONTACT))
    ref = train_tiny(
        adapters[0],
        tmp_path / "runs",
        "contacttrained",
        "sample:contact-json",
        seed=3,
        steps=2,
        extra=(f"response_format={schema}",),
    )
    shown = CliRunner().invoke(cli, ["registry", "schema", ref, "--registry", str(adapters[0])])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output) == {
        "type": "json_schema",
        "json_schema": {"name": "contacttrained", "schema": CONTACT, "strict": True},
    }
    wait_until(lambda: _chat(server, ref).status_code == 200, 5)
    jsonschema.validate(json.loads(_content(_chat(server, ref))), CONTACT)


def test_logit_bias_reaches_the_engine(server: Server) -> None:
    tok = 100
    r = httpx.post(
        server.url + "/v1/completions",
        json={
            "model": "support@1",
            "prompt": "hi",
            "max_tokens": 4,
            "temperature": 0,
            "logit_bias": {str(tok): 100},
            "logprobs": 0,
        },
        timeout=120,
    )
    assert r.status_code == 200, r.text
    tokens = r.json()["choices"][0]["logprobs"]["tokens"]
    assert len(set(tokens)) == 1 and len(tokens) == 4  # the biased token, every step
