//! llama.cpp's built-in chat formats, by the names GGUF converters write into
//! `tokenizer.chat_template` (`"chatml"`, `"mistral-v3"`, …), as Jinja.
//!
//! Each template renders what llama.cpp's `llm_chat_apply_template` writes
//! for that name (`src/llama-chat.cpp`), with three deliberate differences:
//! * the text starts with `bos_token` where the model family's own Jinja
//!   template does (llama.cpp adds BOS while tokenizing instead), so the
//!   rendered text is tokenized like any Hugging Face template's: with special
//!   tokens parsed and without another BOS;
//! * `</s>` is written as `eos_token`;
//! * `mistral-v1` / `mistral-v3` / `mistral-v3-tekken` put the system prompt
//!   where mistral-common and Mistral's own templates put it (before the first
//!   user message in v1, before the last one in v3) rather than where it
//!   appears in the conversation.

/// The llama.cpp template names [`named_template_source`] knows.
pub const NAMED_TEMPLATES: &[&str] = &[
    "chatml",
    "llama2",
    "llama2-sys",
    "llama2-sys-bos",
    "llama2-sys-strip",
    "mistral-v1",
    "mistral-v3",
    "mistral-v3-tekken",
    "mistral-v7",
    "mistral-v7-tekken",
    "phi3",
    "phi4",
    "falcon3",
    "zephyr",
    "monarch",
    "gemma",
    "orion",
    "openchat",
    "vicuna",
    "vicuna-orca",
    "deepseek",
    "deepseek2",
    "deepseek3",
    "command-r",
    "llama3",
    "llama4",
    "chatglm3",
    "minicpm",
    "exaone3",
    "granite",
    "megrez",
    "smolvlm",
];

/// The Jinja source of a llama.cpp built-in template, by name (see [`NAMED_TEMPLATES`]).
pub fn named_template_source(name: &str) -> Option<String> {
    let src = match name {
        "chatml" => CHATML.to_string(),
        "llama2" => llama2(false, false, false),
        "llama2-sys" => llama2(true, false, false),
        "llama2-sys-bos" => llama2(true, true, false),
        "llama2-sys-strip" => llama2(true, false, true),
        "mistral-v1" => mistral_inst(" ", " ", "", "ns.first_user"),
        "mistral-v3" => mistral_inst("", " ", "|trim", "ns.last_user"),
        "mistral-v3-tekken" => mistral_inst("", "", "", "ns.last_user"),
        "mistral-v7" => mistral_v7(" "),
        "mistral-v7-tekken" => mistral_v7(""),
        "phi3" => per_message("'<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n'", "'<|assistant|>\\n'"),
        "phi4" => per_message(
            "'<|im_start|>' + message['role'] + '<|im_sep|>' + message['content'] + '<|im_end|>'",
            "'<|im_start|>assistant<|im_sep|>'",
        ),
        "falcon3" => per_message("'<|' + message['role'] + '|>\\n' + message['content'] + '\\n'", "'<|assistant|>\\n'"),
        "zephyr" => {
            per_message("'<|' + message['role'] + '|>\\n' + message['content'] + '<|endoftext|>\\n'", "'<|assistant|>\\n'")
        }
        "monarch" => per_message(
            "bos_token + message['role'] + '\\n' + message['content'] + eos_token + '\\n'",
            "bos_token + 'assistant\\n'",
        ),
        "gemma" => GEMMA.to_string(),
        "orion" => ORION.to_string(),
        "openchat" => by_role(
            "bos_token",
            "message['content'] + '<|end_of_turn|>'",
            "'GPT4 Correct User: ' + message['content'] + '<|end_of_turn|>'",
            "'GPT4 Correct Assistant: ' + message['content'] + '<|end_of_turn|>'",
            "'GPT4 Correct Assistant:'",
        ),
        "vicuna" => by_role(
            "''",
            "message['content'] + '\\n\\n'",
            "'USER: ' + message['content'] + '\\n'",
            "'ASSISTANT: ' + message['content'] + eos_token + '\\n'",
            "'ASSISTANT:'",
        ),
        "vicuna-orca" => by_role(
            "''",
            "'SYSTEM: ' + message['content'] + '\\n'",
            "'USER: ' + message['content'] + '\\n'",
            "'ASSISTANT: ' + message['content'] + eos_token + '\\n'",
            "'ASSISTANT:'",
        ),
        "deepseek" => by_role(
            "bos_token",
            "message['content']",
            "'### Instruction:\\n' + message['content'] + '\\n'",
            "'### Response:\\n' + message['content'] + '\\n<|EOT|>\\n'",
            "'### Response:\\n'",
        ),
        "deepseek2" => by_role(
            "bos_token",
            "message['content'] + '\\n\\n'",
            "'User: ' + message['content'] + '\\n\\n'",
            "'Assistant: ' + message['content'] + '<｜end▁of▁sentence｜>'",
            "'Assistant:'",
        ),
        "deepseek3" => by_role(
            "bos_token",
            "message['content'] + '\\n\\n'",
            "'<｜User｜>' + message['content']",
            "'<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>'",
            "'<｜Assistant｜>'",
        ),
        "command-r" => by_role(
            "bos_token",
            "'<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>' + message['content']|trim + '<|END_OF_TURN_TOKEN|>'",
            "'<|START_OF_TURN_TOKEN|><|USER_TOKEN|>' + message['content']|trim + '<|END_OF_TURN_TOKEN|>'",
            "'<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' + message['content']|trim + '<|END_OF_TURN_TOKEN|>'",
            "'<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>'",
        ),
        "llama3" => format!(
            "{{{{- bos_token -}}}}{}",
            per_message(
                "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content']|trim + '<|eot_id|>'",
                "'<|start_header_id|>assistant<|end_header_id|>\\n\\n'",
            )
        ),
        "llama4" => format!(
            "{{{{- bos_token -}}}}{}",
            per_message(
                "'<|header_start|>' + message['role'] + '<|header_end|>\\n\\n' + message['content']|trim + '<|eot|>'",
                "'<|header_start|>assistant<|header_end|>\\n\\n'",
            )
        ),
        "chatglm3" => format!(
            "{{{{- '[gMASK]sop' -}}}}{}",
            per_message("'<|' + message['role'] + '|>\\n ' + message['content']", "'<|assistant|>'")
        ),
        "minicpm" => by_role(
            "''",
            "message['content']|trim",
            "'<用户>' + message['content']|trim + '<AI>'",
            "message['content']|trim",
            "''",
        ),
        "exaone3" => by_role(
            "''",
            "'[|system|]' + message['content']|trim + '[|endofturn|]\\n'",
            "'[|user|]' + message['content']|trim + '\\n'",
            "'[|assistant|]' + message['content']|trim + '[|endofturn|]\\n'",
            "'[|assistant|]'",
        ),
        "granite" => per_message(
            "'<|start_of_role|>' + message['role'] + '<|end_of_role|>' + message['content'] + '<|end_of_text|>\\n'",
            "'<|start_of_role|>assistant<|end_of_role|>\\n'",
        ),
        "megrez" => per_message(
            "'<|role_start|>' + message['role'] + '<|role_end|>' + message['content'] + '<|turn_end|>'",
            "'<|role_start|>assistant<|role_end|>'",
        ),
        "smolvlm" => by_role(
            "'<|im_start|>'",
            "message['content'] + '\\n\\n'",
            "'User: ' + message['content'] + '<end_of_utterance>\\n'",
            "'Assistant: ' + message['content'] + '<end_of_utterance>\\n'",
            "'Assistant:'",
        ),
        _ => return None,
    };
    Some(src)
}

const CHATML: &str = "\
{%- for message in messages -%}
{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}";

const GEMMA: &str = "\
{{- bos_token -}}
{%- set ns = namespace(system='') -%}
{%- for message in messages -%}
{%- if message['role'] == 'system' -%}
{%- set ns.system = ns.system + message['content']|trim -%}
{%- else -%}
{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
{{- '<start_of_turn>' + role + '\\n' -}}
{%- if ns.system and role != 'model' -%}{{- ns.system + '\\n\\n' -}}{%- set ns.system = '' -%}{%- endif -%}
{{- message['content']|trim + '<end_of_turn>\\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}";

const ORION: &str = "\
{{- bos_token -}}
{%- set ns = namespace(system='') -%}
{%- for message in messages -%}
{%- if message['role'] == 'system' -%}
{%- set ns.system = ns.system + message['content'] -%}
{%- elif message['role'] == 'user' -%}
{{- 'Human: ' -}}
{%- if ns.system -%}{{- ns.system + '\\n\\n' -}}{%- set ns.system = '' -%}{%- endif -%}
{{- message['content'] + '\\n\\nAssistant: ' + eos_token -}}
{%- else -%}
{{- message['content'] + eos_token -}}
{%- endif -%}
{%- endfor -%}";

/// One line per message whatever its role, then the generation prompt.
fn per_message(line: &str, generation_prompt: &str) -> String {
    format!(
        "{{%- for message in messages -%}}{{{{- {line} -}}}}{{%- endfor -%}}\
         {{%- if add_generation_prompt -%}}{{{{- {generation_prompt} -}}}}{{%- endif -%}}"
    )
}

/// A prefix, then system / user / other (assistant, tool) lines, then the generation prompt.
fn by_role(prefix: &str, system: &str, user: &str, other: &str, generation_prompt: &str) -> String {
    format!(
        "{{{{- {prefix} -}}}}{{%- for message in messages -%}}\
         {{%- if message['role'] == 'system' -%}}{{{{- {system} -}}}}\
         {{%- elif message['role'] == 'user' -%}}{{{{- {user} -}}}}\
         {{%- else -%}}{{{{- {other} -}}}}{{%- endif -%}}{{%- endfor -%}}\
         {{%- if add_generation_prompt -%}}{{{{- {generation_prompt} -}}}}{{%- endif -%}}"
    )
}

/// llama.cpp's Llama 2 family: `[INST] … [/INST]` turns, the system prompt
/// inside the first one (`<<SYS>>` block with `sys`), BOS before every later
/// turn with `bos_inside`, message text trimmed with `strip`.
fn llama2(sys: bool, bos_inside: bool, strip: bool) -> String {
    let content = if strip {
        "message['content']|trim"
    } else {
        "message['content']"
    };
    let system = if sys {
        "'<<SYS>>\\n' + content + '\\n<</SYS>>\\n\\n'"
    } else {
        "content + '\\n'"
    };
    let turn = if bos_inside {
        "bos_token + '[INST] '"
    } else {
        "'[INST] '"
    };
    format!(
        "{{%- set ns = namespace(inside=true) -%}}{{{{- bos_token + '[INST] ' -}}}}\
         {{%- for message in messages -%}}{{%- set content = {content} -%}}\
         {{%- if not ns.inside -%}}{{%- set ns.inside = true -%}}{{{{- {turn} -}}}}{{%- endif -%}}\
         {{%- if message['role'] == 'system' -%}}{{{{- {system} -}}}}\
         {{%- elif message['role'] == 'user' -%}}{{{{- content + ' [/INST]' -}}}}\
         {{%- else -%}}{{{{- content + eos_token -}}}}{{%- set ns.inside = false -%}}{{%- endif -%}}\
         {{%- endfor -%}}"
    )
}

/// Mistral's v1 / v3 / v3-tekken `[INST]` format: `lead` before `[INST]` and
/// `[/INST]`, `trail` after `[INST]` and before the answer, `assistant_filter`
/// on the answer, the system prompt(s) joined by a blank line and put before
/// the user message at `system_at` (`ns.first_user` or `ns.last_user`).
fn mistral_inst(lead: &str, trail: &str, assistant_filter: &str, system_at: &str) -> String {
    format!(
        "{{%- set ns = namespace(system='', first_user=-1, last_user=-1) -%}}\
         {{%- for message in messages -%}}\
         {{%- if message['role'] == 'system' and message['content'] -%}}\
         {{%- set ns.system = ns.system + ('\\n\\n' if ns.system else '') + message['content'] -%}}\
         {{%- elif message['role'] == 'user' -%}}\
         {{%- if ns.first_user < 0 -%}}{{%- set ns.first_user = loop.index0 -%}}{{%- endif -%}}\
         {{%- set ns.last_user = loop.index0 -%}}\
         {{%- endif -%}}\
         {{%- endfor -%}}\
         {{{{- bos_token -}}}}\
         {{%- for message in messages -%}}\
         {{%- if message['role'] == 'user' -%}}\
         {{%- if ns.system and loop.index0 == {system_at} -%}}\
         {{{{- '{lead}[INST]{trail}' + ns.system + '\\n\\n' + message['content'] + '{lead}[/INST]' -}}}}\
         {{%- else -%}}\
         {{{{- '{lead}[INST]{trail}' + message['content'] + '{lead}[/INST]' -}}}}\
         {{%- endif -%}}\
         {{%- elif message['role'] == 'assistant' -%}}\
         {{{{- '{trail}' + message['content']{assistant_filter} + eos_token -}}}}\
         {{%- elif message['role'] != 'system' -%}}\
         {{{{- raise_exception('Only system, user and assistant messages are supported by this template') -}}}}\
         {{%- endif -%}}\
         {{%- endfor -%}}"
    )
}

/// Mistral's v7 format: system prompts in place between
/// `[SYSTEM_PROMPT]`…`[/SYSTEM_PROMPT]`; `space` after the opening tags and
/// before answers (`" "` for SentencePiece models, `""` for Tekken).
fn mistral_v7(space: &str) -> String {
    format!(
        "{{{{- bos_token -}}}}{{%- for message in messages -%}}\
         {{%- if message['role'] == 'system' -%}}\
         {{{{- '[SYSTEM_PROMPT]{space}' + message['content'] + '[/SYSTEM_PROMPT]' -}}}}\
         {{%- elif message['role'] == 'user' -%}}{{{{- '[INST]{space}' + message['content'] + '[/INST]' -}}}}\
         {{%- elif message['role'] == 'assistant' -%}}{{{{- '{space}' + message['content'] + eos_token -}}}}\
         {{%- else -%}}\
         {{{{- raise_exception('Only system, user and assistant messages are supported by this template') -}}}}\
         {{%- endif -%}}{{%- endfor -%}}"
    )
}
