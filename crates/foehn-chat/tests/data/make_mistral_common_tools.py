"""Writes mistral_common_tools.json: mistral-common's token ids for tool
conversations (tool definitions, calls, results, parallel calls, multi-turn
loops) with its v3, v7, v11 and v13 instruct tokenizers.

    python -m venv venv && venv/bin/pip install mistral_common==1.13.1 sentencepiece==0.2.0
    venv/bin/python make_mistral_common_tools.py DATA_DIR SMALL_TEKKEN > mistral_common_tools.json

DATA_DIR is the wheel's `mistral_common/data` (foehn caches it under
~/.cache/foehn/pypi/mistral-common-1.13.1/mistral_common/data): its v3 and v7
SentencePiece tokenizers and Tekken 240911 (v3). SMALL_TEKKEN is
tests/fixtures/mistral-chat/tekken_v13_small.json (see
make_mistral_chat_v11_v13.py), read as v13 and, with its version changed, v11.
The ids are `InstructRequestNormalizer(version) + encode_instruct`, what
`MistralTokenizer.encode_chat_completion` runs after validating the request;
`validator_error` records the validator's verdict where it refuses, and
`errors` the tokenizers that refuse to encode a conversation at all.
"""

import json
import sys
import tempfile
from pathlib import Path

from mistral_common.protocol.instruct.messages import (
    AssistantMessage,
    SystemMessage,
    ToolMessage,
    UserMessage,
)
from mistral_common.protocol.instruct.normalize import get_normalizer
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.protocol.instruct.tool_calls import FunctionCall, Tool, ToolCall
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

DATA, SMALL = sys.argv[1], sys.argv[2]

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather now in a city.",
        # Keys out of alphabetical order on purpose: their order is kept.
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
CALC = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Évalue une expression arithmétique.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
}
NOW = {"type": "function", "function": {"name": "now", "description": "", "parameters": {}}}


def call(id_, name, arguments):
    return {"id": id_, "name": name, "arguments": arguments}


S, U, A, T = "system", "user", "assistant", "tool"
PARIS = call("abcDEF123", "get_weather", '{"city": "Paris", "unit": "celsius"}')
LYON = call("xyz987ABC", "get_weather", '{"unit":"fahrenheit","city":"Lyon"}')
SUM = call("Q1w2E3r4T", "calculator", '{"expression": "2+2*3"}')
CONVERSATIONS = [
    ([WEATHER], [{"role": U, "content": "What's the weather in Paris?"}]),
    ([WEATHER, CALC], [{"role": S, "content": "Use tools when needed."},
                       {"role": U, "content": "What is 2+2*3?"}]),
    ([WEATHER], [{"role": U, "content": "Weather in Paris?"},
                 {"role": A, "content": "", "tool_calls": [PARIS]},
                 {"role": T, "content": '{"temperature": 18, "sky": "clear"}', "tool_call_id": PARIS["id"]}]),
    ([WEATHER], [{"role": U, "content": "Weather in Paris?"},
                 {"role": A, "content": "", "tool_calls": [PARIS]},
                 {"role": T, "content": '{"temperature":18}', "tool_call_id": PARIS["id"]},
                 {"role": A, "content": "It is 18 °C in Paris."},
                 {"role": U, "content": "And in Lyon?"}]),
    ([WEATHER], [{"role": U, "content": "Paris and Lyon, please."},
                 {"role": A, "content": "", "tool_calls": [PARIS, LYON]},
                 {"role": T, "content": '{"temperature": 18}', "tool_call_id": PARIS["id"]},
                 {"role": T, "content": '{"temperature": 64}', "tool_call_id": LYON["id"]}]),
    # Results in the other order than the calls.
    ([WEATHER], [{"role": U, "content": "Paris and Lyon, please."},
                 {"role": A, "content": "", "tool_calls": [PARIS, LYON]},
                 {"role": T, "content": "64 F", "tool_call_id": LYON["id"]},
                 {"role": T, "content": "18 C", "tool_call_id": PARIS["id"]}]),
    ([CALC], [{"role": U, "content": "Compute 2+2*3"},
              {"role": A, "content": "", "tool_calls": [SUM]},
              {"role": T, "content": "8", "tool_call_id": SUM["id"]}]),
    ([NOW, CALC], [{"role": U, "content": "What time is it?"},
                   {"role": A, "content": "", "tool_calls": [call("NoArgs001", "now", "")]},
                   {"role": T, "content": "", "tool_call_id": "NoArgs001"}]),
    ([WEATHER, CALC], [{"role": U, "content": "Hi"},
                       {"role": A, "content": "Hello! How can I help?"},
                       {"role": U, "content": "Météo à Zürich ? 😀"}]),
    # Calls in the history, no tools offered now.
    (None, [{"role": U, "content": "Weather in Paris?"},
            {"role": A, "content": "", "tool_calls": [PARIS]},
            {"role": T, "content": '{"temperature": 18}', "tool_call_id": PARIS["id"]},
            {"role": A, "content": "18 degrees."},
            {"role": U, "content": "Thanks"}]),
    ([CALC], [{"role": U, "content": "Nested"},
              {"role": A, "content": "", "tool_calls": [
                  call("NeSTed001", "calculator", '{"expression": "1+1", "options": {"precision": [1, 2.5, null, true], "note": "ünï"}}')]},
              {"role": T, "content": '["a", {"b": null}]', "tool_call_id": "NeSTed001"}]),
    # Text and a call in one assistant message (v7 and later only).
    ([WEATHER], [{"role": U, "content": "Weather in Paris?"},
                 {"role": A, "content": "Let me check.", "tool_calls": [PARIS]},
                 {"role": T, "content": "sunny", "tool_call_id": PARIS["id"]}]),
    # A loop of two rounds.
    ([WEATHER, CALC], [{"role": S, "content": "Be brief."},
                       {"role": U, "content": "Paris temperature times two?"},
                       {"role": A, "content": "", "tool_calls": [PARIS]},
                       {"role": T, "content": '{"temperature": 18}', "tool_call_id": PARIS["id"]},
                       {"role": A, "content": "", "tool_calls": [call("Calc00002", "calculator", '{"expression": "18*2"}')]},
                       {"role": T, "content": "36", "tool_call_id": "Calc00002"}]),
]


def mc_message(m):
    role = m["role"]
    if role == S:
        return SystemMessage(content=m["content"])
    if role == U:
        return UserMessage(content=m["content"])
    if role == T:
        return ToolMessage(content=m["content"], tool_call_id=m["tool_call_id"])
    calls = [ToolCall(id=c["id"], function=FunctionCall(name=c["name"], arguments=c["arguments"]))
             for c in m.get("tool_calls", [])]
    return AssistantMessage(content=m["content"] or None, tool_calls=calls or None)


def small(version):
    data = json.loads(Path(SMALL).read_text(encoding="utf-8"))
    data["config"]["version"] = version
    path = Path(tempfile.mkdtemp()) / f"tekken_{version}.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return MistralTokenizer.from_file(str(path))


def main():
    tokenizers = {
        "v3_spm": MistralTokenizer.from_file(f"{DATA}/mistral_instruct_tokenizer_240323.model.v3"),
        "v7_spm": MistralTokenizer.from_file(f"{DATA}/mistral_instruct_tokenizer_241114.model.v7"),
        "tekken_240911": MistralTokenizer.from_file(f"{DATA}/tekken_240911.json"),
        "small_v11": small("v11"),
        "small_v13": small("v13"),
    }
    out = {"mistral_common_version": "1.13.1", "conversations": []}
    for tools, conv in CONVERSATIONS:
        entry = {"tools": tools, "messages": conv, "ids": {}, "errors": {}, "validator_error": {}}
        for name, tok in tokenizers.items():
            inner = tok.instruct_tokenizer
            request = ChatCompletionRequest(
                messages=[mc_message(m) for m in conv],
                tools=[Tool.model_validate(t) for t in tools] if tools else None,
            )
            try:
                instruct = get_normalizer(inner.tokenizer.version).from_chat_completion_request(request)
                ids = inner.encode_instruct(instruct).tokens
            except Exception as e:  # the tokenizer refuses the conversation
                entry["errors"][name] = f"{type(e).__name__}: {e}"
                continue
            try:
                assert tok.encode_chat_completion(request).tokens == ids, (name, conv)
            except AssertionError:
                raise
            except Exception as e:  # the validator's verdict
                entry["validator_error"][name] = f"{type(e).__name__}: {e}"
            entry["ids"][name] = ids
        out["conversations"].append(entry)
    json.dump(out, sys.stdout, ensure_ascii=False, indent=1)
    sys.stdout.write("\n")


main()
