//! The tiny Mistral fixture's chat reference (`tests/fixtures/tiny-mistral/reference/chat_template.json`):
//! mistral-common's ids for three conversations, and the text its Jinja template renders.

use std::path::PathBuf;

use foehn_chat::{
    encode_mistral_chat, is_mistral_tokenizer, mistral_version, ChatTemplate, Message,
    MistralVersion,
};
use foehn_tokenizer::{EncodeOptions, Tokenizer};
use serde::Deserialize;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(rel)
}

#[derive(Deserialize)]
struct Reference {
    conversations: Vec<Conversation>,
}

#[derive(Deserialize)]
struct Conversation {
    messages: Vec<Message>,
    rendered: String,
    mistral_common_ids: Vec<u32>,
    tokenizer_json_ids: Vec<u32>,
    llama_cpp_ids: Vec<u32>,
}

fn reference() -> Reference {
    let path = fixture("tiny-mistral/reference/chat_template.json");
    serde_json::from_slice(&std::fs::read(&path).expect("read chat_template.json"))
        .expect("parse chat_template.json")
}

/// The three routes to the tiny model's vocabulary.
fn tokenizers() -> Vec<(&'static str, Tokenizer)> {
    [
        "tiny-mistral/hf/tokenizer.model",
        "tiny-mistral/hf/tokenizer.json",
        "tiny-mistral/gguf/tiny-mistral-F32.gguf",
    ]
    .into_iter()
    .map(|rel| {
        (
            rel,
            Tokenizer::from_file(fixture(rel)).unwrap_or_else(|e| panic!("{rel}: {e}")),
        )
    })
    .collect()
}

#[test]
fn mistral_encoding_matches_mistral_common_on_every_route() {
    let reference = reference();
    assert_eq!(reference.conversations.len(), 3);
    for (route, tok) in tokenizers() {
        assert!(is_mistral_tokenizer(&tok), "{route}");
        assert_eq!(
            mistral_version(&tok, tok.chat_template()),
            Some(MistralVersion::V3),
            "{route}"
        );
        for (i, conv) in reference.conversations.iter().enumerate() {
            let ids = encode_mistral_chat(&tok, &conv.messages, MistralVersion::V3).unwrap();
            assert_eq!(ids, conv.mistral_common_ids, "{route}, conversation {i}");
            // v2 is v3 without tools.
            assert_eq!(
                encode_mistral_chat(&tok, &conv.messages, MistralVersion::V2).unwrap(),
                ids,
                "{route}, v2, {i}"
            );
        }
    }
}

#[test]
fn rendering_then_tokenizing_gives_the_extra_dummy_prefix_instead() {
    // Why encode_mistral_chat exists: the rendered text, tokenized with special
    // tokens parsed, gives "▁▁" (261) after [INST] where mistral-common has "▁" (922).
    let reference = reference();
    let opts = EncodeOptions {
        add_bos: Some(false),
        parse_special: true,
    };
    for (route, tok) in tokenizers() {
        for conv in &reference.conversations {
            let ids = tok.encode(&conv.rendered, opts).unwrap();
            let want = if route.ends_with(".gguf") {
                &conv.llama_cpp_ids
            } else {
                &conv.tokenizer_json_ids
            };
            assert_eq!(&ids, want, "{route}");
            assert_ne!(ids, conv.mistral_common_ids, "{route}");
        }
    }
}

#[test]
fn the_models_own_template_renders_the_reference_text() {
    let reference = reference();
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixture("tiny-mistral/hf/tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    let source = config["chat_template"].as_str().unwrap();
    let direct = ChatTemplate::new(source, "<s>", "</s>").unwrap();

    let json_tok = Tokenizer::from_file(fixture("tiny-mistral/hf/tokenizer.json")).unwrap();
    let gguf_tok =
        Tokenizer::from_file(fixture("tiny-mistral/gguf/tiny-mistral-F32.gguf")).unwrap();
    assert_eq!(json_tok.chat_template(), Some(source));
    assert_eq!(gguf_tok.chat_template(), Some(source));
    let from_json = ChatTemplate::for_tokenizer(&json_tok).unwrap();
    let from_gguf = ChatTemplate::for_tokenizer(&gguf_tok).unwrap();
    assert_eq!(
        (from_gguf.bos_token(), from_gguf.eos_token()),
        ("<s>", "</s>")
    );
    assert_eq!(from_gguf.name(), None);

    for conv in &reference.conversations {
        for template in [&direct, &from_json, &from_gguf] {
            for add_generation_prompt in [true, false] {
                assert_eq!(
                    template
                        .render(&conv.messages, add_generation_prompt)
                        .unwrap(),
                    conv.rendered
                );
            }
        }
    }
}

#[test]
fn the_models_template_raises_on_roles_that_do_not_alternate() {
    let tok = Tokenizer::from_file(fixture("tiny-mistral/gguf/tiny-mistral-F32.gguf")).unwrap();
    let template = ChatTemplate::for_tokenizer(&tok).unwrap();
    let err = template
        .render(&[Message::user("a"), Message::user("b")], true)
        .unwrap_err();
    assert!(
        matches!(&err, foehn_chat::ChatError::Raised(m) if m == "Conversation roles must alternate user/assistant/user/assistant/..."),
        "{err}"
    );
}

#[test]
fn without_a_template_the_mistral_format_is_used() {
    // tokenizer.model carries no template: fall back to Mistral's [INST] format,
    // which renders the reference conversations exactly as the model's own template does.
    let tok = Tokenizer::from_file(fixture("tiny-mistral/hf/tokenizer.model")).unwrap();
    assert_eq!(tok.chat_template(), None);
    let template = ChatTemplate::for_tokenizer(&tok).unwrap();
    assert_eq!(template.name(), Some("mistral-v3"));
    for conv in &reference().conversations {
        assert_eq!(
            template.render(&conv.messages, true).unwrap(),
            conv.rendered
        );
    }
}

#[test]
fn a_gguf_template_name_selects_the_built_in_format() {
    // The converter writes the llama.cpp name "mistral-v3" instead of Jinja.
    let tok = Tokenizer::from_file(fixture("vocab/mistral-v3-spm.gguf")).unwrap();
    assert_eq!(tok.chat_template(), Some("mistral-v3"));
    let template = ChatTemplate::for_tokenizer(&tok).unwrap();
    assert_eq!(template.name(), Some("mistral-v3"));
    let messages = [
        Message::system("Be brief."),
        Message::user("Hello"),
        Message::assistant("Hi."),
        Message::user("Bye"),
    ];
    assert_eq!(
        template.render(&messages, true).unwrap(),
        "<s>[INST] Hello[/INST] Hi.</s>[INST] Be brief.\n\nBye[/INST]"
    );

    assert_eq!(
        mistral_version(&tok, tok.chat_template()),
        Some(MistralVersion::V3)
    );
    let ids = encode_mistral_chat(&tok, &messages, MistralVersion::V3).unwrap();
    let text = |s: &str| {
        tok.encode(
            s,
            EncodeOptions {
                add_bos: Some(false),
                parse_special: false,
            },
        )
        .unwrap()
    };
    let (inst, end_inst) = (
        tok.token_to_id("[INST]").unwrap(),
        tok.token_to_id("[/INST]").unwrap(),
    );
    assert_eq!((inst, end_inst), (3, 4));
    let mut want = vec![1, inst];
    want.extend(text("Hello"));
    want.push(end_inst);
    want.extend(text("Hi."));
    want.extend([2, inst]);
    want.extend(text("Be brief.\n\nBye"));
    want.push(end_inst);
    assert_eq!(ids, want);
}

#[test]
fn a_chatml_model_is_not_a_mistral_one() {
    let tok = Tokenizer::from_file(fixture("vocab/smollm2-bpe.gguf")).unwrap();
    assert!(!is_mistral_tokenizer(&tok));
    assert_eq!(mistral_version(&tok, tok.chat_template()), None);
    let template = ChatTemplate::for_tokenizer(&tok).unwrap();
    let text = template.render(&[Message::user("Hi")], true).unwrap();
    assert!(
        text.ends_with("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
        "{text:?}"
    );
}
