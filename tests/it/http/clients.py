"""The official OpenAI and Ollama Python clients against a running bitnetd (tests/it/http_clients.rs).

Usage: clients.py PORT API_KEY. Exits non-zero with a traceback on the first failed check.
"""

import sys

import ollama
import openai

port, key = sys.argv[1], sys.argv[2]
base = f"http://127.0.0.1:{port}"
messages = [{"role": "user", "content": "Hello there"}]

# OpenAI: models, a whole answer, a streamed one with usage, the legacy completions.
client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
models = [m.id for m in client.models.list()]
assert models == ["tiny-i2_s.gguf"], models
whole = client.chat.completions.create(
    model=models[0], messages=messages, max_tokens=6, temperature=0, seed=1
)
assert whole.choices[0].finish_reason == "length", whole
assert whole.usage.completion_tokens == 6, whole.usage
text = whole.choices[0].message.content
chunks = list(
    client.chat.completions.create(
        model=models[0],
        messages=messages,
        max_completion_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
)
streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert streamed == text, (streamed, text)
assert chunks[-1].usage.completion_tokens == 6, chunks[-1]
done = client.completions.create(model=models[0], prompt="Hi", max_tokens=3, stop=["zzz"])
assert done.choices[0].text is not None and done.usage.completion_tokens <= 3, done

# The wrong key is refused as OpenAI refuses it.
try:
    openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).models.list()
    raise AssertionError("a wrong key was accepted")
except openai.AuthenticationError as e:
    assert e.status_code == 401

# Ollama: what Home Assistant's integration calls (list, show, a streamed chat with
# keep_alive, tools and options), a whole chat and generate, ps, version.
oc = ollama.Client(host=base, headers={"Authorization": f"Bearer {key}"})
names = [m.model for m in oc.list().models]
assert names == ["tiny-i2_s:latest"], names
assert oc.show(names[0]).details.format == "gguf"
parts = list(
    oc.chat(
        model=names[0],
        messages=messages,
        stream=True,
        keep_alive="5m",
        tools=[],
        options={"num_ctx": 2048, "num_predict": 6, "temperature": 0},
    )
)
assert parts[-1].done and parts[-1].done_reason == "length", parts[-1]
assert parts[-1].eval_count == 6 and parts[-1].total_duration > 0, parts[-1]
ollama_text = "".join(p.message.content for p in parts)
assert ollama_text == text, (ollama_text, text)
whole = oc.chat(model=names[0], messages=messages, options={"num_predict": 6, "temperature": 0})
assert whole.message.content == text and whole.done, whole
gen = oc.generate(model=names[0], prompt="Hi", options={"num_predict": 3, "seed": 4})
assert gen.done and gen.eval_count == 3, gen
assert [m.model for m in oc.ps().models] == names
try:
    ollama.Client(host=base).list()
    raise AssertionError("a missing key was accepted")
except ollama.ResponseError as e:
    assert e.status_code == 401, e

print("python clients: all checks passed")
