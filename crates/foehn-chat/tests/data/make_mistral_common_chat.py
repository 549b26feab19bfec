"""Writes mistral_common_chat.json: mistral-common's token ids for a set of
conversations, over the tokenizers that ship in the mistral-common 1.13.1 wheel.

    python -m venv venv && venv/bin/pip install mistral_common==1.13.1 sentencepiece==0.2.0
    venv/bin/python make_mistral_common_chat.py DATA_DIR > mistral_common_chat.json

DATA_DIR is the wheel's `mistral_common/data` (foehn caches it under
~/.cache/foehn/pypi/mistral-common-1.13.1/mistral_common/data). The ids are
`InstructRequestNormalizer(version) + InstructTokenizerV*.encode_instruct`, what
`MistralTokenizer.encode_chat_completion` runs after validating the request.
Where its validator accepts the conversation the two are checked equal;
`validator_error` says why it rejects the others (the encoding rules still
apply to them, e.g. to a conversation that ends with the assistant's answer).
"""

import json
import sys

from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
from mistral_common.protocol.instruct.normalize import get_normalizer
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

DATA = sys.argv[1]

TOKENIZERS = {
    # name: (file in the wheel's data/, instruct version)
    "v1_spm": ("tokenizer.model.v1", "v1"),
    "v3_spm": ("mistral_instruct_tokenizer_240323.model.v3", "v3"),
    "v7_spm": ("mistral_instruct_tokenizer_241114.model.v7", "v7"),
    "tekken_240911": ("tekken_240911.json", "v3"),
}

S, U, A = "system", "user", "assistant"
CONVERSATIONS = [
    [(U, "Hello, who are you?")],
    [(S, "You are a terse assistant."), (U, "What is 2+2?")],
    [(U, "Hi"), (A, "Hello! How can I help?"), (U, "Tell me a joke.")],
    [(S, "Answer in French."), (U, "Hello"), (A, "Bonjour !"), (U, "How are you?")],
    [(S, "Rule one."), (U, "first"), (A, "ok"), (S, "Rule two."), (U, "second")],
    [(U, "part a"), (U, "part b"), (A, "answer with trailing spaces   "), (U, "  leading and trailing  ")],
    [(A, "I speak first."), (U, "Then me.")],
    [(U, "[INST] literal </s> <s> text\nünïcödé 😀 1234567")],
    [(U, "")],
    [(S, "Only a system prompt.")],
    [(U, "q1"), (A, "a1"), (U, "q2"), (A, "a2")],
]

CLASSES = {S: SystemMessage, U: UserMessage, A: AssistantMessage}


def messages(conv):
    return [CLASSES[role](content=text) for role, text in conv]


def main():
    out = {
        "mistral_common_version": "1.13.1",
        "tokenizers": {name: {"file": f, "version": v} for name, (f, v) in TOKENIZERS.items()},
        "conversations": [],
    }
    loaded = {name: MistralTokenizer.from_file(f"{DATA}/{f}") for name, (f, _) in TOKENIZERS.items()}
    for conv in CONVERSATIONS:
        entry = {"messages": [{"role": r, "content": t} for r, t in conv], "ids": {}}
        for name, tok in loaded.items():
            inner = tok.instruct_tokenizer
            version = inner.tokenizer.version
            assert version.value == TOKENIZERS[name][1], (name, version)
            request = ChatCompletionRequest(messages=messages(conv))
            instruct = get_normalizer(version).from_chat_completion_request(request)
            ids = inner.encode_instruct(instruct).tokens
            try:
                assert tok.encode_chat_completion(request).tokens == ids, (name, conv)
            except AssertionError:
                raise
            except Exception as e:  # the validator's verdict
                entry["validator_error"] = f"{type(e).__name__}: {e}"
            entry["ids"][name] = ids
        out["conversations"].append(entry)
    json.dump(out, sys.stdout, ensure_ascii=False, indent=1)
    sys.stdout.write("\n")


main()
