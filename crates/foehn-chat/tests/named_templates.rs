//! llama.cpp's built-in chat formats, as Jinja: each name renders the text
//! llama.cpp writes for it (plus BOS where the model family's own template
//! writes it; see the `named` module docs).

use foehn_chat::{ChatError, ChatTemplate, Message, NAMED_TEMPLATES};

const BOS: &str = "<s>";
const EOS: &str = "</s>";

fn render(name: &str, messages: &[Message], add_generation_prompt: bool) -> String {
    let template =
        ChatTemplate::from_name(name, BOS, EOS).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(template.name(), Some(name));
    template
        .render(messages, add_generation_prompt)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// system / user / assistant, rendered with the generation prompt.
fn three_messages() -> Vec<Message> {
    vec![
        Message::system("You are a helpful assistant."),
        Message::user("Hello!"),
        Message::assistant("Hi! How can I help?"),
    ]
}

/// Hand-checked renderings of [`three_messages`] with `add_generation_prompt`.
const THREE_MESSAGES: &[(&str, &str)] = &[
    (
        "chatml",
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n\
         <|im_start|>assistant\nHi! How can I help?<|im_end|>\n<|im_start|>assistant\n",
    ),
    ("llama2", "<s>[INST] You are a helpful assistant.\nHello! [/INST]Hi! How can I help?</s>"),
    ("llama2-sys", "<s>[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nHello! [/INST]Hi! How can I help?</s>"),
    ("llama2-sys-bos", "<s>[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nHello! [/INST]Hi! How can I help?</s>"),
    ("llama2-sys-strip", "<s>[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nHello! [/INST]Hi! How can I help?</s>"),
    ("mistral-v1", "<s> [INST] You are a helpful assistant.\n\nHello! [/INST] Hi! How can I help?</s>"),
    ("mistral-v3", "<s>[INST] You are a helpful assistant.\n\nHello![/INST] Hi! How can I help?</s>"),
    ("mistral-v3-tekken", "<s>[INST]You are a helpful assistant.\n\nHello![/INST]Hi! How can I help?</s>"),
    (
        "mistral-v7",
        "<s>[SYSTEM_PROMPT] You are a helpful assistant.[/SYSTEM_PROMPT][INST] Hello![/INST] Hi! How can I help?</s>",
    ),
    (
        "mistral-v7-tekken",
        "<s>[SYSTEM_PROMPT]You are a helpful assistant.[/SYSTEM_PROMPT][INST]Hello![/INST]Hi! How can I help?</s>",
    ),
    (
        "phi3",
        "<|system|>\nYou are a helpful assistant.<|end|>\n<|user|>\nHello!<|end|>\n<|assistant|>\nHi! How can I help?<|end|>\n\
         <|assistant|>\n",
    ),
    (
        "phi4",
        "<|im_start|>system<|im_sep|>You are a helpful assistant.<|im_end|><|im_start|>user<|im_sep|>Hello!<|im_end|>\
         <|im_start|>assistant<|im_sep|>Hi! How can I help?<|im_end|><|im_start|>assistant<|im_sep|>",
    ),
    (
        "falcon3",
        "<|system|>\nYou are a helpful assistant.\n<|user|>\nHello!\n<|assistant|>\nHi! How can I help?\n<|assistant|>\n",
    ),
    (
        "zephyr",
        "<|system|>\nYou are a helpful assistant.<|endoftext|>\n<|user|>\nHello!<|endoftext|>\n\
         <|assistant|>\nHi! How can I help?<|endoftext|>\n<|assistant|>\n",
    ),
    (
        "monarch",
        "<s>system\nYou are a helpful assistant.</s>\n<s>user\nHello!</s>\n<s>assistant\nHi! How can I help?</s>\n\
         <s>assistant\n",
    ),
    (
        "gemma",
        "<s><start_of_turn>user\nYou are a helpful assistant.\n\nHello!<end_of_turn>\n\
         <start_of_turn>model\nHi! How can I help?<end_of_turn>\n<start_of_turn>model\n",
    ),
    ("orion", "<s>Human: You are a helpful assistant.\n\nHello!\n\nAssistant: </s>Hi! How can I help?</s>"),
    (
        "openchat",
        "<s>You are a helpful assistant.<|end_of_turn|>GPT4 Correct User: Hello!<|end_of_turn|>\
         GPT4 Correct Assistant: Hi! How can I help?<|end_of_turn|>GPT4 Correct Assistant:",
    ),
    ("vicuna", "You are a helpful assistant.\n\nUSER: Hello!\nASSISTANT: Hi! How can I help?</s>\nASSISTANT:"),
    ("vicuna-orca", "SYSTEM: You are a helpful assistant.\nUSER: Hello!\nASSISTANT: Hi! How can I help?</s>\nASSISTANT:"),
    (
        "deepseek",
        "<s>You are a helpful assistant.### Instruction:\nHello!\n### Response:\nHi! How can I help?\n<|EOT|>\n\
         ### Response:\n",
    ),
    (
        "deepseek2",
        "<s>You are a helpful assistant.\n\nUser: Hello!\n\nAssistant: Hi! How can I help?<｜end▁of▁sentence｜>Assistant:",
    ),
    (
        "deepseek3",
        "<s>You are a helpful assistant.\n\n<｜User｜>Hello!<｜Assistant｜>Hi! How can I help?<｜end▁of▁sentence｜>\
         <｜Assistant｜>",
    ),
    (
        "command-r",
        "<s><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>You are a helpful assistant.<|END_OF_TURN_TOKEN|>\
         <|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hello!<|END_OF_TURN_TOKEN|>\
         <|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Hi! How can I help?<|END_OF_TURN_TOKEN|>\
         <|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
    ),
    (
        "llama3",
        "<s><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\nHi! How can I help?<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    (
        "llama4",
        "<s><|header_start|>system<|header_end|>\n\nYou are a helpful assistant.<|eot|>\
         <|header_start|>user<|header_end|>\n\nHello!<|eot|>\
         <|header_start|>assistant<|header_end|>\n\nHi! How can I help?<|eot|>\
         <|header_start|>assistant<|header_end|>\n\n",
    ),
    (
        "chatglm3",
        "[gMASK]sop<|system|>\n You are a helpful assistant.<|user|>\n Hello!<|assistant|>\n Hi! How can I help?<|assistant|>",
    ),
    ("minicpm", "You are a helpful assistant.<用户>Hello!<AI>Hi! How can I help?"),
    (
        "exaone3",
        "[|system|]You are a helpful assistant.[|endofturn|]\n[|user|]Hello!\n[|assistant|]Hi! How can I help?[|endofturn|]\n\
         [|assistant|]",
    ),
    (
        "granite",
        "<|start_of_role|>system<|end_of_role|>You are a helpful assistant.<|end_of_text|>\n\
         <|start_of_role|>user<|end_of_role|>Hello!<|end_of_text|>\n\
         <|start_of_role|>assistant<|end_of_role|>Hi! How can I help?<|end_of_text|>\n\
         <|start_of_role|>assistant<|end_of_role|>\n",
    ),
    (
        "megrez",
        "<|role_start|>system<|role_end|>You are a helpful assistant.<|turn_end|><|role_start|>user<|role_end|>Hello!<|turn_end|>\
         <|role_start|>assistant<|role_end|>Hi! How can I help?<|turn_end|><|role_start|>assistant<|role_end|>",
    ),
    (
        "smolvlm",
        "<|im_start|>You are a helpful assistant.\n\nUser: Hello!<end_of_utterance>\n\
         Assistant: Hi! How can I help?<end_of_utterance>\nAssistant:",
    ),
];

#[test]
fn every_named_template_renders_three_messages() {
    let names: Vec<&str> = THREE_MESSAGES.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names, NAMED_TEMPLATES,
        "one expected rendering per name, in order"
    );
    for (name, want) in THREE_MESSAGES {
        assert_eq!(render(name, &three_messages(), true), *want, "{name}");
    }
}

#[test]
fn the_generation_prompt_is_optional() {
    let messages = [Message::system("S"), Message::user("U")];
    assert_eq!(
        render("chatml", &messages, false),
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
    );
    assert_eq!(
        render("llama3", &messages, false),
        "<s><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|>"
    );
    // Mistral formats end a user turn with [/INST] either way.
    assert_eq!(
        render("mistral-v3", &messages, false),
        "<s>[INST] S\n\nU[/INST]"
    );
    assert_eq!(
        render("mistral-v3", &messages, true),
        "<s>[INST] S\n\nU[/INST]"
    );
}

/// llama.cpp's own test conversation (`tests/test-chat-template.cpp`), whose
/// third message checks trimming.
fn llama_cpp_conversation() -> Vec<Message> {
    vec![
        Message::system("You are a helpful assistant"),
        Message::user("Hello"),
        Message::assistant("Hi there"),
        Message::user("Who are you"),
        Message::assistant("   I am an assistant   "),
        Message::user("Another question"),
    ]
}

/// llama.cpp's expected outputs for that conversation (with the generation
/// prompt), with our BOS in front where our template writes it. For
/// mistral-v3 / mistral-v3-tekken the system prompt sits before the last user
/// message, as in Mistral's official templates (llama.cpp's test lists those
/// outputs too, as the Jinja renderings of Mistral-Large-2407 / Nemo-2407).
const LLAMA_CPP_OUTPUTS: &[(&str, &str)] = &[
    (
        "chatml",
        "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n\
         Hi there<|im_end|>\n<|im_start|>user\nWho are you<|im_end|>\n<|im_start|>assistant\n   I am an assistant   <|im_end|>\n\
         <|im_start|>user\nAnother question<|im_end|>\n<|im_start|>assistant\n",
    ),
    (
        "llama2",
        "<s>[INST] You are a helpful assistant\nHello [/INST]Hi there</s>[INST] Who are you [/INST]   I am an assistant   </s>\
         [INST] Another question [/INST]",
    ),
    (
        "llama2-sys-bos",
        "<s>[INST] <<SYS>>\nYou are a helpful assistant\n<</SYS>>\n\nHello [/INST]Hi there</s><s>[INST] Who are you [/INST]   \
         I am an assistant   </s><s>[INST] Another question [/INST]",
    ),
    (
        "llama2-sys-strip",
        "<s>[INST] <<SYS>>\nYou are a helpful assistant\n<</SYS>>\n\nHello [/INST]Hi there</s>[INST] Who are you [/INST]\
         I am an assistant</s>[INST] Another question [/INST]",
    ),
    (
        "mistral-v1",
        "<s> [INST] You are a helpful assistant\n\nHello [/INST] Hi there</s> [INST] Who are you [/INST]    I am an assistant   \
         </s> [INST] Another question [/INST]",
    ),
    (
        "mistral-v3",
        "<s>[INST] Hello[/INST] Hi there</s>[INST] Who are you[/INST] I am an assistant</s>\
         [INST] You are a helpful assistant\n\nAnother question[/INST]",
    ),
    (
        "mistral-v3-tekken",
        "<s>[INST]Hello[/INST]Hi there</s>[INST]Who are you[/INST]   I am an assistant   </s>\
         [INST]You are a helpful assistant\n\nAnother question[/INST]",
    ),
    (
        "mistral-v7",
        "<s>[SYSTEM_PROMPT] You are a helpful assistant[/SYSTEM_PROMPT][INST] Hello[/INST] Hi there</s>[INST] Who are you[/INST]    \
         I am an assistant   </s>[INST] Another question[/INST]",
    ),
    (
        "monarch",
        "<s>system\nYou are a helpful assistant</s>\n<s>user\nHello</s>\n<s>assistant\nHi there</s>\n<s>user\nWho are you</s>\n\
         <s>assistant\n   I am an assistant   </s>\n<s>user\nAnother question</s>\n<s>assistant\n",
    ),
    (
        "gemma",
        "<s><start_of_turn>user\nYou are a helpful assistant\n\nHello<end_of_turn>\n<start_of_turn>model\nHi there<end_of_turn>\n\
         <start_of_turn>user\nWho are you<end_of_turn>\n<start_of_turn>model\nI am an assistant<end_of_turn>\n\
         <start_of_turn>user\nAnother question<end_of_turn>\n<start_of_turn>model\n",
    ),
    (
        "orion",
        "<s>Human: You are a helpful assistant\n\nHello\n\nAssistant: </s>Hi there</s>Human: Who are you\n\nAssistant: </s>   \
         I am an assistant   </s>Human: Another question\n\nAssistant: </s>",
    ),
    (
        "openchat",
        "<s>You are a helpful assistant<|end_of_turn|>GPT4 Correct User: Hello<|end_of_turn|>GPT4 Correct Assistant: Hi there\
         <|end_of_turn|>GPT4 Correct User: Who are you<|end_of_turn|>GPT4 Correct Assistant:    I am an assistant   \
         <|end_of_turn|>GPT4 Correct User: Another question<|end_of_turn|>GPT4 Correct Assistant:",
    ),
    (
        "deepseek",
        "<s>You are a helpful assistant### Instruction:\nHello\n### Response:\nHi there\n<|EOT|>\n### Instruction:\nWho are you\n\
         ### Response:\n   I am an assistant   \n<|EOT|>\n### Instruction:\nAnother question\n### Response:\n",
    ),
    (
        "vicuna",
        "You are a helpful assistant\n\nUSER: Hello\nASSISTANT: Hi there</s>\nUSER: Who are you\nASSISTANT:    \
         I am an assistant   </s>\nUSER: Another question\nASSISTANT:",
    ),
    (
        "vicuna-orca",
        "SYSTEM: You are a helpful assistant\nUSER: Hello\nASSISTANT: Hi there</s>\nUSER: Who are you\nASSISTANT:    \
         I am an assistant   </s>\nUSER: Another question\nASSISTANT:",
    ),
    (
        "command-r",
        "<s><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>You are a helpful assistant<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|>\
         <|USER_TOKEN|>Hello<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>Hi there<|END_OF_TURN_TOKEN|>\
         <|START_OF_TURN_TOKEN|><|USER_TOKEN|>Who are you<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>\
         I am an assistant<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|USER_TOKEN|>Another question<|END_OF_TURN_TOKEN|>\
         <|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
    ),
    (
        "llama3",
        "<s><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant<|eot_id|><|start_header_id|>user\
         <|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHi there<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nWho are you<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n\
         I am an assistant<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nAnother question<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    (
        "phi3",
        "<|system|>\nYou are a helpful assistant<|end|>\n<|user|>\nHello<|end|>\n<|assistant|>\nHi there<|end|>\n<|user|>\n\
         Who are you<|end|>\n<|assistant|>\n   I am an assistant   <|end|>\n<|user|>\nAnother question<|end|>\n<|assistant|>\n",
    ),
    (
        "chatglm3",
        "[gMASK]sop<|system|>\n You are a helpful assistant<|user|>\n Hello<|assistant|>\n Hi there<|user|>\n Who are you\
         <|assistant|>\n    I am an assistant   <|user|>\n Another question<|assistant|>",
    ),
    ("minicpm", "You are a helpful assistant<用户>Hello<AI>Hi there<用户>Who are you<AI>I am an assistant<用户>Another question<AI>"),
    (
        "deepseek2",
        "<s>You are a helpful assistant\n\nUser: Hello\n\nAssistant: Hi there<｜end▁of▁sentence｜>User: Who are you\n\n\
         Assistant:    I am an assistant   <｜end▁of▁sentence｜>User: Another question\n\nAssistant:",
    ),
    (
        "granite",
        "<|start_of_role|>system<|end_of_role|>You are a helpful assistant<|end_of_text|>\n<|start_of_role|>user<|end_of_role|>\
         Hello<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>Hi there<|end_of_text|>\n<|start_of_role|>user\
         <|end_of_role|>Who are you<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>   I am an assistant   \
         <|end_of_text|>\n<|start_of_role|>user<|end_of_role|>Another question<|end_of_text|>\n<|start_of_role|>assistant\
         <|end_of_role|>\n",
    ),
    (
        "megrez",
        "<|role_start|>system<|role_end|>You are a helpful assistant<|turn_end|><|role_start|>user<|role_end|>Hello<|turn_end|>\
         <|role_start|>assistant<|role_end|>Hi there<|turn_end|><|role_start|>user<|role_end|>Who are you<|turn_end|>\
         <|role_start|>assistant<|role_end|>   I am an assistant   <|turn_end|><|role_start|>user<|role_end|>Another question\
         <|turn_end|><|role_start|>assistant<|role_end|>",
    ),
    (
        "phi4",
        "<|im_start|>system<|im_sep|>You are a helpful assistant<|im_end|><|im_start|>user<|im_sep|>Hello<|im_end|>\
         <|im_start|>assistant<|im_sep|>Hi there<|im_end|><|im_start|>user<|im_sep|>Who are you<|im_end|>\
         <|im_start|>assistant<|im_sep|>   I am an assistant   <|im_end|><|im_start|>user<|im_sep|>Another question<|im_end|>\
         <|im_start|>assistant<|im_sep|>",
    ),
];

#[test]
fn named_templates_match_llama_cpp_on_its_test_conversation() {
    for (name, want) in LLAMA_CPP_OUTPUTS {
        assert_eq!(
            render(name, &llama_cpp_conversation(), true),
            *want,
            "{name}"
        );
    }
}

#[test]
fn names_and_sources_are_told_apart() {
    let named = ChatTemplate::from_name_or_source(" chatml\n", BOS, EOS).unwrap();
    assert_eq!(named.name(), Some("chatml"));
    let jinja =
        ChatTemplate::from_name_or_source("{{ bos_token }}{{ messages[0]['content'] }}", BOS, EOS)
            .unwrap();
    assert_eq!(jinja.name(), None);
    assert_eq!(jinja.render(&[Message::user("x")], false).unwrap(), "<s>x");
    // A bare word that is no known name is an error, not a template printing that word.
    for bad in ["mistral-v9", "chatml2"] {
        match ChatTemplate::from_name_or_source(bad, BOS, EOS) {
            Err(ChatError::UnknownName(n)) => assert_eq!(n, bad),
            other => panic!("{bad}: {other:?}"),
        }
    }
    assert!(matches!(
        ChatTemplate::from_name("{{ x }}", BOS, EOS),
        Err(ChatError::UnknownName(_))
    ));
}

#[test]
fn mistral_templates_refuse_tool_messages() {
    for name in ["mistral-v3", "mistral-v7"] {
        let err = ChatTemplate::from_name(name, BOS, EOS)
            .unwrap()
            .render(&[Message::user("q"), Message::tool("{}")], true)
            .unwrap_err();
        assert!(
            matches!(err, ChatError::Raised(ref m) if m.contains("Only system, user and assistant")),
            "{name}: {err}"
        );
    }
}
