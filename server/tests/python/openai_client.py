"""Drives Tokenmill's /v1 with the official openai client, unmodified.

Run by server/tests/api/openai_client.rs against a freshly started portal; the base URL, key
and model come from the environment. Exits non-zero with a message on the first mismatch.
"""

import os
import sys

import openai
from openai import OpenAI

base = os.environ["TOKENMILL_BASE_URL"]
model = os.environ["TOKENMILL_MODEL"]
client = OpenAI(base_url=f"{base}/v1", api_key=os.environ["TOKENMILL_API_KEY"], max_retries=0)


def check(cond, what):
    if not cond:
        sys.exit(f"FAILED: {what}")


ids = [m.id for m in client.models.list().data]
check(model in ids, f"models.list has {model}: {ids}")
check(client.models.retrieve(model).id == model, "models.retrieve")

whole = client.chat.completions.create(
    model=model,
    messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
    max_tokens=6,
    temperature=0,
    extra_body={"ignore_eos": True},
)
check(whole.object == "chat.completion", f"object {whole.object}")
check(whole.choices[0].finish_reason == "length", f"finish {whole.choices[0].finish_reason}")
check(whole.usage.completion_tokens == 6, f"usage {whole.usage}")
text = whole.choices[0].message.content

parts, usage = [], None
stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
    max_tokens=6,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
    extra_body={"ignore_eos": True},
)
for chunk in stream:
    if chunk.choices:
        parts.append(chunk.choices[0].delta.content or "")
    if chunk.usage:
        usage = chunk.usage
check("".join(parts) == text, f"stream {''.join(parts)!r} != {text!r}")
check(usage is not None and usage.completion_tokens == 6, f"stream usage {usage}")

done = client.completions.create(
    model=model, prompt="The mill", max_tokens=3, temperature=0, logprobs=1, extra_body={"ignore_eos": True}
)
check(done.usage.completion_tokens == 3, f"completions usage {done.usage}")
check(len(done.choices[0].logprobs.tokens) == 3, "completions logprobs")
two = client.completions.create(
    model=model, prompt=["The mill", "A river"], max_tokens=3, temperature=0, extra_body={"ignore_eos": True}
)
check([c.index for c in two.choices] == [0, 1] and two.usage.completion_tokens == 6, f"two prompts {two}")

try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    sys.exit("FAILED: an unknown model was accepted")
except openai.NotFoundError as e:
    check(e.status_code == 404, f"status {e.status_code}")
    check("model_not_found" in str(e.body), f"body {e.body}")

try:
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], temperature=7)
    sys.exit("FAILED: temperature 7 was accepted")
except openai.BadRequestError as e:
    check(e.status_code == 400, f"status {e.status_code}")

# Structured outputs: the fixture's random weights write valid JSON only because of the mask.
import json

import jsonschema

person = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "colour": {"enum": ["red", "green", "blue"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 2},
    },
    "required": ["name", "age", "colour", "tags"],
    "additionalProperties": False,
}
fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": person, "strict": True}}
for seed in (1, 2, 3):
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Describe someone."}], max_tokens=300,
        seed=seed, response_format=fmt,
    )
    check(r.choices[0].finish_reason == "stop", f"schema finish {r.choices[0].finish_reason}")
    jsonschema.validate(json.loads(r.choices[0].message.content), person)
streamed = "".join(
    c.choices[0].delta.content or ""
    for c in client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Describe someone."}], max_tokens=300,
        seed=1, response_format=fmt, stream=True,
    )
    if c.choices
)
first = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Describe someone."}], max_tokens=300,
    seed=1, response_format=fmt,
)
check(streamed == first.choices[0].message.content, f"streamed schema {streamed!r}")
code = client.completions.create(
    model=model, prompt="Code:", max_tokens=20, seed=5, extra_body={"guided_regex": "[A-Z]{2}[0-9]{3}"}
).choices[0].text
import re

check(re.fullmatch("[A-Z]{2}[0-9]{3}", code) is not None, f"regex {code!r}")
pick = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Pick."}], max_tokens=10, seed=6,
    extra_body={"guided_choice": ["alpha", "beta", "gamma"]},
).choices[0].message.content
check(pick in ("alpha", "beta", "gamma"), f"choice {pick!r}")
try:
    client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "x"}],
        response_format={"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "wibble"}}},
    )
    sys.exit("FAILED: an impossible schema was accepted")
except openai.BadRequestError as e:
    check(e.status_code == 400 and "response_format" in str(e.body), f"bad schema {e.body}")

# Tools: a forced call whose arguments validate, whole and streamed, then the tool's turn.
weather = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 8}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
tools = [{"type": "function", "function": {"name": "get_weather", "parameters": weather}}]
ask = [{"role": "user", "content": "Weather in Nairobi?"}]
named = {"type": "function", "function": {"name": "get_weather"}}
r = client.chat.completions.create(model=model, messages=ask, tools=tools, tool_choice=named, max_tokens=200, seed=2)
check(r.choices[0].finish_reason == "tool_calls", f"tool finish {r.choices[0].finish_reason}")
call = r.choices[0].message.tool_calls[0]
check(call.function.name == "get_weather", f"tool name {call.function.name}")
jsonschema.validate(json.loads(call.function.arguments), weather)
deltas = [
    d
    for c in client.chat.completions.create(
        model=model, messages=ask, tools=tools, tool_choice=named, max_tokens=200, seed=2, stream=True
    )
    if c.choices and c.choices[0].delta.tool_calls
    for d in c.choices[0].delta.tool_calls
]
check(len(deltas) == 1 and deltas[0].function.arguments == call.function.arguments, f"streamed call {deltas}")
after = client.chat.completions.create(
    model=model,
    messages=ask
    + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 24})},
    ],
    tools=tools,
    max_tokens=4,
    extra_body={"ignore_eos": True},
)
check(after.usage.completion_tokens == 4, f"tool turn {after.usage}")

# n = 3 with a seed: choice i is what seed + i gives alone; the prompt is counted once.
ask_n = [{"role": "user", "content": "Tell me a short story about a mill by a river."}]
three = client.chat.completions.create(
    model=model, messages=ask_n, n=3, seed=11, temperature=1.0, max_tokens=5,
    extra_body={"ignore_eos": True},
)
check([c.index for c in three.choices] == [0, 1, 2], f"n indexes {three.choices}")
for i, c in enumerate(three.choices):
    alone = client.chat.completions.create(
        model=model, messages=ask_n, seed=11 + i, temperature=1.0, max_tokens=5,
        extra_body={"ignore_eos": True},
    )
    check(c.message.content == alone.choices[0].message.content, f"choice {i} against seed {11 + i}")
    check(three.usage.prompt_tokens == alone.usage.prompt_tokens, f"n prompt once {three.usage}")
check(three.usage.completion_tokens == 15, f"n usage {three.usage}")
streamed = {}
for chunk in client.chat.completions.create(
    model=model, messages=ask_n, n=3, seed=11, temperature=1.0, max_tokens=5, stream=True,
    extra_body={"ignore_eos": True},
):
    for c in chunk.choices:
        streamed[c.index] = streamed.get(c.index, "") + (c.delta.content or "")
check([streamed[i] for i in range(3)] == [c.message.content for c in three.choices], f"n streamed {streamed}")

# Batches: upload a JSONL file, run it, read the results, as the client's Batch API does.
import io
import time

lines = [
    {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": model, "messages": [{"role": "user", "content": f"Say {i}"}],
              "max_tokens": 3, "ignore_eos": True}}
    for i in range(3)
]
content = "\n".join(json.dumps(l) for l in lines).encode()
uploaded = client.files.create(file=("requests.jsonl", io.BytesIO(content)), purpose="batch")
check(uploaded.purpose == "batch" and uploaded.bytes == len(content), f"file {uploaded}")
batch = client.batches.create(
    input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
    metadata={"from": "python"},
)
check(batch.request_counts.total == 3, f"batch {batch}")
for _ in range(300):
    batch = client.batches.retrieve(batch.id)
    if batch.status in ("completed", "failed", "cancelled", "expired"):
        break
    time.sleep(0.1)
check(batch.status == "completed", f"batch status {batch.status}")
check(batch.request_counts.completed == 3, f"counts {batch.request_counts}")
results = [json.loads(l) for l in client.files.content(batch.output_file_id).text.splitlines()]
check([r["custom_id"] for r in results] == ["r0", "r1", "r2"], f"results {results}")
check(all(r["response"]["body"]["usage"]["completion_tokens"] == 3 for r in results), "batch usage")
check(batch.id in [b.id for b in client.batches.list(limit=5).data], "batches.list")

print("openai client: ok")
