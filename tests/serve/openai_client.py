"""The official OpenAI Python client against foehn's `serve` example.

Run by tests/serve_openai.rs: python openai_client.py BASE_URL MODEL API_KEY
Checks models, chat and text completions (whole and streamed, greedy, so the
two must agree), structured output (response_format: 20 seeded runs whole
and 20 streamed validate), tool calls (tool_choice required and named, whole
and streamed, arguments validated against the tool's schema, a second turn
with the results), and the client's view of error answers. Prints one JSON
summary line; any failed check raises (non-zero exit).
"""

import json
import re
import sys

import jsonschema
import openai


def main() -> None:
    base_url, model, api_key = sys.argv[1:4]
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)
    summary = {"openai_version": openai.__version__}

    # GET /v1/models
    ids = [m.id for m in client.models.list().data]
    assert model in ids, f"{model} not in {ids}"
    summary["models"] = ids

    # Chat, whole.
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    chat = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=24)
    choice = chat.choices[0]
    assert chat.object == "chat.completion", chat
    assert chat.model == model, chat
    assert choice.message.role == "assistant", choice
    assert choice.finish_reason in ("stop", "length"), choice
    assert choice.message.content.strip(), choice
    assert chat.usage.completion_tokens > 0 and chat.usage.prompt_tokens > 0, chat.usage
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens
    summary["chat"] = choice.message.content

    # Chat, streamed, with the usage chunk: the same greedy text.
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage, chunks = "", None, None, 0
    for chunk in stream:
        chunks += 1
        assert chunk.object == "chat.completion.chunk", chunk
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert text == choice.message.content, (text, choice.message.content)
    assert finish == choice.finish_reason, finish
    assert usage is not None and usage.completion_tokens == chat.usage.completion_tokens, usage
    assert chunks >= 3, chunks
    summary["chat_stream_chunks"] = chunks

    # Text completions, whole and streamed.
    prompt = "The three primary colors are"
    done = client.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=16)
    assert done.object == "text_completion", done
    assert done.choices[0].finish_reason in ("stop", "length"), done
    assert len(done.choices[0].text) > 0, done
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=16, stream=True)
        if c.choices
    )
    assert streamed == done.choices[0].text, (streamed, done.choices[0].text)
    summary["completion"] = done.choices[0].text

    # Log-probabilities come back in OpenAI's shape. They describe the final
    # (truncated) sampling distribution: a step whose top-k/top-p/min-p cut
    # left one candidate reports that one, with logprob 0, as greedy
    # decoding does.
    lp = client.chat.completions.create(
        model=model, messages=messages, temperature=1, seed=7, max_tokens=4, logprobs=True, top_logprobs=2
    )
    content = lp.choices[0].logprobs.content
    assert len(content) >= 1 and all(t.logprob <= 0 for t in content), content
    for t in content:
        top = [c.logprob for c in t.top_logprobs]
        assert 1 <= len(top) <= 2 and top == sorted(top, reverse=True), t
        assert all(x <= 0 for x in top) and top[0] >= t.logprob, t
        assert len(top) == 2 or t.logprob == 0, t

    # Structured output: response_format with a JSON schema (whole and
    # streamed, the same greedy text) and json_object; the text is JSON that
    # the schema validates, ending with finish_reason "stop".
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "country": {"type": "string", "maxLength": 20},
            "population": {"type": "integer", "minimum": 0},
            "size": {"enum": ["small", "medium", "large"]},
            "landmarks": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 2},
        },
        "required": ["city", "country", "population", "size", "landmarks"],
        "additionalProperties": False,
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}}
    city = [{"role": "user", "content": "Describe Paris as JSON."}]
    structured = client.chat.completions.create(
        model=model, messages=city, temperature=0, max_tokens=120, response_format=response_format
    )
    assert structured.choices[0].finish_reason == "stop", structured
    record = json.loads(structured.choices[0].message.content)
    jsonschema.validate(record, schema)
    streamed = ""
    for chunk in client.chat.completions.create(
        model=model, messages=city, temperature=0, max_tokens=120, response_format=response_format, stream=True
    ):
        for c in chunk.choices:
            streamed += c.delta.content or ""
    assert streamed == structured.choices[0].message.content, (streamed, structured)
    sampled = [
        client.chat.completions.create(
            model=model, messages=city, temperature=0.8, seed=seed, max_tokens=120, response_format=response_format
        ).choices[0]
        for seed in range(20)
    ]
    for choice in sampled:
        assert choice.finish_reason == "stop", choice
        jsonschema.validate(json.loads(choice.message.content), schema)
    for seed in range(20):
        text, finish = "", None
        for chunk in client.chat.completions.create(
            model=model, messages=city, temperature=0.8, seed=seed, max_tokens=120,
            response_format=response_format, stream=True,
        ):
            for c in chunk.choices:
                text += c.delta.content or ""
                finish = c.finish_reason or finish
        assert finish == "stop", (seed, text)
        jsonschema.validate(json.loads(text), schema)
        assert text == sampled[seed].message.content, (seed, text)
    summary["structured_runs"] = {"whole": len(sampled), "streamed": 20}
    obj = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "A short JSON object with a cat's name."}],
        temperature=0,
        max_tokens=60,
        response_format={"type": "json_object"},
    )
    if obj.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(obj.choices[0].message.content), dict), obj
    else:
        assert obj.choices[0].finish_reason == "length", obj
    summary["structured"] = record

    # Tool calls: required, named, streamed; a second turn with the results.
    params = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 30},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    }
    tools = [
        {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city", "parameters": params}},
        {"type": "function", "function": {"name": "get_time", "description": "The time now", "parameters": {"type": "object", "properties": {}}}},
    ]
    ask = [{"role": "user", "content": "What is the weather like in Paris today?"}]

    def check_calls(calls, names=("get_weather", "get_time")):
        assert calls, "no tool calls"
        for c in calls:
            assert c.type == "function", c
            assert re.fullmatch(r"[a-zA-Z0-9]{9}", c.id), c.id
            assert c.function.name in names, c
            args = json.loads(c.function.arguments)
            if c.function.name == "get_weather":
                jsonschema.validate(args, params)

    called = client.chat.completions.create(
        model=model, messages=ask, tools=tools, tool_choice="required", temperature=0, max_tokens=200
    )
    choice = called.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    check_calls(choice.message.tool_calls)
    # Streamed: the pieces make the same calls (ids are new per answer).
    pieces = {}
    finish = None
    for chunk in client.chat.completions.create(
        model=model, messages=ask, tools=tools, tool_choice="required", temperature=0, max_tokens=200, stream=True
    ):
        for c in chunk.choices:
            finish = c.finish_reason or finish
            for d in c.delta.tool_calls or []:
                p = pieces.setdefault(d.index, {"name": "", "arguments": ""})
                p["name"] += (d.function.name or "") if d.function else ""
                p["arguments"] += (d.function.arguments or "") if d.function else ""
    assert finish == "tool_calls", finish
    whole = [{"name": c.function.name, "arguments": c.function.arguments} for c in choice.message.tool_calls]
    assert [pieces[i] for i in sorted(pieces)] == whole, (pieces, whole)
    for seed in range(10):
        sampled_call = client.chat.completions.create(
            model=model, messages=ask, tools=tools, tool_choice="required", temperature=0.8, seed=seed, max_tokens=200
        ).choices[0]
        assert sampled_call.finish_reason == "tool_calls", (seed, sampled_call)
        check_calls(sampled_call.message.tool_calls)
    named = client.chat.completions.create(
        model=model, messages=ask, tools=tools, temperature=0, max_tokens=120,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    ).choices[0]
    assert named.finish_reason == "tool_calls", named
    assert len(named.message.tool_calls) == 1, named
    check_calls(named.message.tool_calls, names=("get_weather",))
    # The second turn: the calls and their results go back; the model answers.
    follow = ask + [choice.message.model_dump(exclude_none=True)]
    for c in choice.message.tool_calls:
        follow.append({"role": "tool", "tool_call_id": c.id, "content": json.dumps({"temperature": 18, "sky": "clear"})})
    answer = client.chat.completions.create(
        model=model, messages=follow, tools=tools, tool_choice="none", temperature=0, max_tokens=60
    ).choices[0]
    assert answer.finish_reason in ("stop", "length"), answer
    assert answer.message.content and not answer.message.tool_calls, answer
    summary["tools"] = {
        "calls": [{"name": c.function.name, "arguments": c.function.arguments} for c in choice.message.tool_calls],
        "second_turn": answer.message.content,
    }

    # Errors, as the client classifies them.
    errors = {}
    try:
        client.chat.completions.create(model="no-such-model", messages=messages)
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError as e:
        assert e.status_code == 404 and e.code == "model_not_found", e
        errors["unknown_model"] = e.status_code
    try:
        client.chat.completions.create(model=model, messages=messages, n=2)
        raise AssertionError("n=2 was accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and e.param == "n", e
        errors["n=2"] = e.status_code
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "word " * 2000}])
        raise AssertionError("an over-long prompt was accepted")
    except openai.BadRequestError as e:
        assert e.code == "context_length_exceeded", e
        errors["context"] = e.status_code
    try:
        bad_key = openai.OpenAI(base_url=base_url, api_key="wrong-key", max_retries=0)
        bad_key.models.list()
        raise AssertionError("a wrong API key was accepted")
    except openai.AuthenticationError as e:
        assert e.status_code == 401, e
        errors["bad_key"] = e.status_code
    try:
        client.chat.completions.create(
            model=model,
            messages=messages,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}},
        )
        raise AssertionError("a schema that does not compile was accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400, e
        errors["bad_schema"] = e.status_code
    try:
        client.chat.completions.create(
            model=model, messages=messages, tools=tools,
            tool_choice={"type": "function", "function": {"name": "no_such_tool"}},
        )
        raise AssertionError("an unknown tool_choice name was accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and e.param == "tool_choice", e
        errors["unknown_tool"] = e.status_code
    summary["errors"] = errors

    print(json.dumps(summary))


if __name__ == "__main__":
    main()
