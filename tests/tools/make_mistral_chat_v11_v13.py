"""Writes tests/fixtures/mistral-chat/: a small Tekken v13 tokenizer and the
token ids mistral-common 1.13.1 gives for a set of conversations with its v11
and v13 instruct tokenizers (system prompts, multi-turn, tools, reasoning).

    python3 -m venv venv && venv/bin/pip install mistral_common==1.13.1
    venv/bin/python tests/tools/make_mistral_chat_v11_v13.py

The tokenizer `tekken_v13_small.json` is mistral-common's own tekken_240911.json
cut down to its first NORMAL_TOKENS byte-pair ranks (tiktoken merges by rank, so
a prefix of the ranks is a valid, smaller vocabulary), with the special-token
list of Mistral's v11/v13 files (Mistral Small 3.2, Magistral, Ministral 3:
[ARGS] = 32, [CALL_ID] = 33, [THINK] = 34, [/THINK] = 35) and "version": "v13".
The v11 ids come from the same file with its version set to v11.

Conversations are in the OpenAI-like form foehn's `Message` reads: role,
content, optional `reasoning` (an assistant's thinking, a closed ThinkChunk
before its text), `tool_calls` ([{id, name, arguments}]) and `tool_call_id`.
Each conversation may carry `tools` (OpenAI tool definitions). The ids are
`MistralTokenizer.encode_chat_completion(request).tokens`; where the request
validator refuses a conversation (e.g. it ends with an assistant answer), the
ids are the normalizer + instruct tokenizer's, which encode_chat_completion runs
after validation, and `validator_error` says why.
"""

import json
import os
import sys
import tempfile
from pathlib import Path

import mistral_common
from mistral_common.protocol.instruct.chunk import TextChunk, ThinkChunk
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

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests/fixtures/mistral-chat"
NORMAL_TOKENS = 3000
NUM_SPECIAL = 1000
SPECIALS = {
    0: "<unk>", 1: "<s>", 2: "</s>", 3: "[INST]", 4: "[/INST]", 5: "[AVAILABLE_TOOLS]",
    6: "[/AVAILABLE_TOOLS]", 7: "[TOOL_RESULTS]", 8: "[/TOOL_RESULTS]", 9: "[TOOL_CALLS]",
    10: "[IMG]", 11: "<pad>", 12: "[IMG_BREAK]", 13: "[IMG_END]", 14: "[PREFIX]", 15: "[MIDDLE]",
    16: "[SUFFIX]", 17: "[SYSTEM_PROMPT]", 18: "[/SYSTEM_PROMPT]", 19: "[TOOL_CONTENT]",
    24: "[AUDIO]", 25: "[BEGIN_AUDIO]", 32: "[ARGS]", 33: "[CALL_ID]", 34: "[THINK]", 35: "[/THINK]",
}


def small_tekken(version):
    data = Path(mistral_common.__file__).parent / "data/tekken_240911.json"
    full = json.loads(data.read_text(encoding="utf-8"))
    specials = [
        {"rank": i, "token_str": SPECIALS.get(i, f"<SPECIAL_{i}>"), "is_control": True}
        for i in range(max(SPECIALS) + 1)
    ]
    config = dict(full["config"])
    config.update(
        default_vocab_size=NUM_SPECIAL + NORMAL_TOKENS,
        default_num_special_tokens=NUM_SPECIAL,
        version=version,
    )
    return {"config": config, "vocab": full["vocab"][:NORMAL_TOKENS], "special_tokens": specials}


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        # Keys sorted at every level: foehn's serde_json maps keep keys sorted.
        "parameters": {
            "properties": {
                "city": {"description": "City name", "type": "string"},
                "unit": {"enum": ["celsius", "fahrenheit"], "type": "string"},
            },
            "required": ["city"],
            "type": "object",
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web: returns snippets.",
        "parameters": {"properties": {"query": {"type": "string"}}, "required": ["query"], "type": "object"},
    },
}


def call(id_, name, arguments):
    return {"id": id_, "name": name, "arguments": arguments}


S = lambda t: {"role": "system", "content": t}  # noqa: E731
U = lambda t: {"role": "user", "content": t}  # noqa: E731
A = lambda t, **kw: {"role": "assistant", "content": t, **kw}  # noqa: E731
T = lambda id_, t: {"role": "tool", "content": t, "tool_call_id": id_}  # noqa: E731

CONVERSATIONS = [
    {"messages": [U("Hello, who are you?")]},
    {"messages": [S("You are a terse assistant."), U("What is 2+2?")]},
    {"messages": [U("Hi"), A("Hello! How can I help?"), U("Tell me a joke.")]},
    {"messages": [S("Answer in French."), U("Hello"), A("Bonjour !   "), S("Be polite."), U("How are you?")]},
    {"messages": [U("part a"), U("part b"), A("ok"), A("more"), U("  spaces  ")]},
    {"messages": [A("I speak first."), U("Then me.")]},
    {"messages": [S("Only a system prompt.")]},
    {"messages": [U("[INST] literal </s> [THINK] text\nünïcödé 😀 1234567")]},
    {
        "tools": [WEATHER, SEARCH],
        "messages": [S("You can call tools."), U("Weather in Paris?")],
    },
    {
        "tools": [WEATHER],
        "messages": [
            U("Weather in Paris?"),
            A("", tool_calls=[call("abc123def", "get_weather", '{"city": "Paris", "unit": "celsius"}')]),
            T("abc123def", '{"temperature": 21, "sky": "clear"}'),
            A("It is 21 °C and clear in Paris."),
            U("And in Lyon?"),
        ],
    },
    {
        "tools": [WEATHER, SEARCH],
        "messages": [
            U("Weather in Oslo and news about it?"),
            A(
                "",
                tool_calls=[
                    call("call00001", "get_weather", '{"city":"Oslo"}'),
                    call("call00002", "search", '{"query": "Oslo news", "n": 3, "x": 1.5}'),
                ],
            ),
            # Results out of call order: v13 sorts them by the calls' order.
            T("call00002", "Oslo hosts a festival."),
            T("call00001", "-3 degrees, snow"),
        ],
    },
    {
        "tools": [SEARCH],
        "messages": [
            U("Find it."),
            A("Let me search.", tool_calls=[call("xyz987654", "search", "not json")]),
            T("xyz987654", "nothing found"),
            U("Try again"),
            A("", tool_calls=[call("xyz987655", "search", "")]),
        ],
    },
    {"messages": [U("What is 17*3?"), A("17*3 = 51.", reasoning="17*3 = 17*2 + 17 = 34 + 17 = 51.")], "think": True},
    {
        "messages": [
            S("Think step by step."),
            U("Is 91 prime?"),
            A("No: 91 = 7 × 13.", reasoning="Try 7: 7*13 = 91. So not prime."),
            U("And 97?"),
        ],
        "think": True,
    },
    {
        "tools": [WEATHER],
        "messages": [
            U("Weather in Rome?"),
            A("", reasoning="I should call the tool.", tool_calls=[call("rome00001", "get_weather", '{"city": "Rome"}')]),
            T("rome00001", "sunny"),
        ],
        "think": True,
    },
    {"messages": [U("q1"), A("a1", reasoning="r1"), A("a2", reasoning="r2"), U("q2")], "think": True},
]


def to_mistral(msg):
    role = msg["role"]
    if role == "system":
        return SystemMessage(content=msg["content"])
    if role == "user":
        return UserMessage(content=msg["content"])
    if role == "tool":
        return ToolMessage(content=msg["content"], tool_call_id=msg["tool_call_id"])
    content = msg["content"]
    if msg.get("reasoning") is not None:
        content = [ThinkChunk(thinking=msg["reasoning"], closed=True)] + ([TextChunk(text=content)] if content else [])
    calls = [
        ToolCall(id=c["id"], function=FunctionCall(name=c["name"], arguments=c["arguments"]))
        for c in msg.get("tool_calls", [])
    ]
    return AssistantMessage(content=content or None, tool_calls=calls or None)


def encode(tok, conv):
    request = ChatCompletionRequest(
        messages=[to_mistral(m) for m in conv["messages"]],
        tools=[Tool(**t) for t in conv.get("tools", [])] or None,
    )
    inner = tok.instruct_tokenizer
    instruct = get_normalizer(inner.tokenizer.version).from_chat_completion_request(request)
    ids = inner.encode_instruct(instruct).tokens
    try:
        assert tok.encode_chat_completion(request).tokens == ids
        return ids, None
    except AssertionError:
        raise
    except Exception as e:  # the validator's verdict
        return ids, f"{type(e).__name__}: {e}"


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    v13_path = OUT / "tekken_v13_small.json"
    v13_path.write_text(json.dumps(small_tekken("v13"), ensure_ascii=False) + "\n", encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        v11_path = Path(tmp) / "tekken_v11_small.json"
        v11_path.write_text(json.dumps(small_tekken("v11")), encoding="utf-8")
        tokenizers = {"v11": MistralTokenizer.from_file(v11_path), "v13": MistralTokenizer.from_file(v13_path)}
        out = {"mistral_common_version": mistral_common.__version__, "tokenizer": v13_path.name, "conversations": []}
        for conv in CONVERSATIONS:
            entry = {"messages": conv["messages"], "tools": conv.get("tools"), "ids": {}}
            for name, tok in tokenizers.items():
                if conv.get("think") and name == "v11":
                    continue  # v11 has no [THINK] encoding: mistral-common refuses ThinkChunks
                ids, error = encode(tok, conv)
                entry["ids"][name] = ids
                if error:
                    entry.setdefault("validator_error", {})[name] = error
            out["conversations"].append(entry)
    with open(OUT / "chat_v11_v13.json", "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    counts = {n: sum(n in c["ids"] for c in out["conversations"]) for n in tokenizers}
    print(f"wrote {OUT}: {counts}", file=sys.stderr)


main()
