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

print("openai client: ok")
