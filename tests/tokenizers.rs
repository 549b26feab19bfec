//! Byte-exact tokenization against the fixtures, through every route: the
//! tokenizer files themselves (tokenizer.json, tokenizer.model, tekken.json)
//! and the tokenizers rebuilt from GGUF metadata.

mod common;

use common::{cases, fixture, pypi, Case};
use foehn::hub::known;
use foehn::tokenizer::{EncodeOptions, Tokenizer};

const NO_BOS: EncodeOptions = EncodeOptions {
    add_bos: Some(false),
    parse_special: false,
};
const NO_BOS_SPECIAL: EncodeOptions = EncodeOptions {
    add_bos: Some(false),
    parse_special: true,
};

/// Encodes every case and compares ids (and, where given, decoded text, full
/// and streamed); fails listing every mismatch.
fn check(
    tok: &Tokenizer,
    cases: &[Case],
    expected: impl Fn(&Case) -> Vec<u32>,
    check_decode: bool,
) {
    let mut failures = Vec::new();
    for c in cases {
        let want = expected(c);
        let got = tok.encode(&c.text, NO_BOS).expect("encode");
        if got != want {
            failures.push(format!(
                "{}: {:?}\n  want {want:?}\n  got  {got:?}",
                c.key, c.text
            ));
            continue;
        }
        if let (true, Some(decoded)) = (check_decode, &c.decoded) {
            let text = tok.decode(&got, true).expect("decode");
            if &text != decoded {
                failures.push(format!("{}: decode {text:?} != {decoded:?}", c.key));
            }
            let mut stream = tok.stream_decoder(true);
            let mut streamed = String::new();
            for &id in &got {
                streamed.push_str(&stream.push(tok, id).expect("stream push"));
            }
            streamed.push_str(&stream.finish(tok).expect("stream finish"));
            if &streamed != decoded {
                failures.push(format!("{}: streamed {streamed:?} != {decoded:?}", c.key));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn mistral_v1_sentencepiece_model() {
    let tok = Tokenizer::from_file(pypi(&known::MISTRAL_TOKENIZER_V1)).unwrap();
    check(
        &tok,
        &cases("tokenizers/mistral_v1_spm.jsonl"),
        |c| c.ids.clone(),
        true,
    );
}

#[test]
fn mistral_v3_sentencepiece_model() {
    let tok = Tokenizer::from_file(pypi(&known::MISTRAL_TOKENIZER_V3)).unwrap();
    check(
        &tok,
        &cases("tokenizers/mistral_v3_spm.jsonl"),
        |c| c.ids.clone(),
        true,
    );
}

#[test]
fn mistral_v7_sentencepiece_model() {
    let tok = Tokenizer::from_file(pypi(&known::MISTRAL_TOKENIZER_V7)).unwrap();
    check(
        &tok,
        &cases("tokenizers/mistral_v7_spm.jsonl"),
        |c| c.ids.clone(),
        true,
    );
}

#[test]
fn mistral_tekken() {
    let tok = Tokenizer::from_file(pypi(&known::TEKKEN_240911)).unwrap();
    check(
        &tok,
        &cases("tokenizers/mistral_tekken_240911.jsonl"),
        |c| c.ids.clone(),
        true,
    );
}

/// llama.cpp's ids for the strings where its GGUF tokenizer differs from sentencepiece.
fn llama_cpp_overrides() -> std::collections::HashMap<String, Vec<u32>> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("vocab/vocab_check.json")).unwrap())
            .unwrap();
    v["mistral-v3-spm.gguf"]["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let ids = m["llama_cpp"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap() as u32)
                .collect();
            (m["key"].as_str().unwrap().to_string(), ids)
        })
        .collect()
}

#[test]
fn mistral_v3_from_gguf_metadata() {
    let tok = Tokenizer::from_file(fixture("vocab/mistral-v3-spm.gguf")).unwrap();
    let overrides = llama_cpp_overrides();
    assert_eq!(overrides.len(), 2);
    check(
        &tok,
        &cases("tokenizers/mistral_v3_spm.jsonl"),
        |c| {
            overrides
                .get(&c.key)
                .cloned()
                .unwrap_or_else(|| c.ids.clone())
        },
        true,
    );
    // The model asks for BOS: encode adds it by default.
    assert_eq!(
        tok.encode("Hello world", EncodeOptions::default()).unwrap(),
        vec![1, 23325, 2294]
    );
}

fn check_smollm2(tok: &Tokenizer) {
    let cases = cases("smollm2/tokenize_llama_cpp.jsonl");
    check(tok, &cases, |c| c.ids.clone(), false);
    let mut failures = Vec::new();
    for c in &cases {
        let want = c.ids_parse_special.clone().expect("ids_parse_special");
        let got = tok.encode(&c.text, NO_BOS_SPECIAL).unwrap();
        if got != want {
            failures.push(format!(
                "{}: {:?}\n  want {want:?}\n  got  {got:?}",
                c.key, c.text
            ));
        }
        // Byte-level BPE round-trips every string.
        assert_eq!(tok.decode(&c.ids, false).unwrap(), c.text, "{}", c.key);
    }
    assert!(
        failures.is_empty(),
        "parse_special:\n{}",
        failures.join("\n")
    );
    // add_bos_token is false for SmolLM2: nothing is prepended.
    assert_eq!(
        tok.encode("Hello world", EncodeOptions::default()).unwrap(),
        vec![19556, 905]
    );
}

#[test]
fn smollm2_bpe_from_vocab_gguf() {
    check_smollm2(&Tokenizer::from_file(fixture("vocab/smollm2-bpe.gguf")).unwrap());
}

#[test]
fn smollm2_bpe_from_the_real_model() {
    check_smollm2(&Tokenizer::from_file(pypi(&known::SMOLLM2_135M_Q4_1)).unwrap());
}

#[test]
fn tiny_mistral_every_route() {
    let cases = cases("tokenizers/tiny_mistral_spm.jsonl");
    for file in [
        "tiny-mistral/hf/tokenizer.json",
        "tiny-mistral/hf/tokenizer.model",
        "tiny-mistral/gguf/tiny-mistral-F32.gguf",
    ] {
        let tok = Tokenizer::from_file(fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        check(&tok, &cases, |c| c.ids.clone(), true);
        assert_eq!(tok.bos_id(), Some(1), "{file}");
        assert_eq!(tok.eos_id(), Some(2), "{file}");
        assert!(tok.add_bos(), "{file}");
    }
}

#[test]
fn special_token_text_is_plain_text_unless_asked() {
    let check: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny-mistral/reference/hf_tokenizer_check.json"))
            .unwrap(),
    )
    .unwrap();
    let mismatches = check["encode_special_tokens=false"]["mismatches"]
        .as_array()
        .unwrap();
    assert!(!mismatches.is_empty());
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as u32)
            .collect()
    };
    for file in [
        "tiny-mistral/hf/tokenizer.json",
        "tiny-mistral/hf/tokenizer.model",
        "tiny-mistral/gguf/tiny-mistral-F32.gguf",
    ] {
        let tok = Tokenizer::from_file(fixture(file)).unwrap();
        for m in mismatches {
            let text = m["text"].as_str().unwrap();
            assert_eq!(
                tok.encode(text, NO_BOS).unwrap(),
                ids(&m["sentencepiece"]),
                "{file}: {text:?} as text"
            );
            assert_eq!(
                tok.encode(text, NO_BOS_SPECIAL).unwrap(),
                ids(&m["tokenizer_json"]),
                "{file}: {text:?} parsed"
            );
        }
    }
}

#[test]
fn streaming_decode_never_splits_characters() {
    let tok = Tokenizer::from_file(fixture("tiny-mistral/gguf/tiny-mistral-F32.gguf")).unwrap();
    // Not in the tiny vocabulary: these become byte-fallback pieces, one byte each.
    let text = "naïve 日本語 🦀!";
    let ids = tok.encode(text, NO_BOS).unwrap();
    let mut stream = tok.stream_decoder(true);
    let mut out = String::new();
    for &id in &ids {
        let piece = stream.push(&tok, id).unwrap();
        assert!(
            !piece.contains('\u{FFFD}'),
            "broken character emitted: {piece:?}"
        );
        out.push_str(&piece);
    }
    out.push_str(&stream.finish(&tok).unwrap());
    assert_eq!(out, text);
    // A truncated character at the end is flushed, not dropped.
    let cut = &ids[..ids.len() - 2];
    let mut stream = tok.stream_decoder(true);
    let mut out = String::new();
    for &id in cut {
        out.push_str(&stream.push(&tok, id).unwrap());
    }
    out.push_str(&stream.finish(&tok).unwrap());
    assert_eq!(out, tok.decode(cut, true).unwrap());
    assert!(out.ends_with('\u{FFFD}'));
}

#[test]
fn out_of_range_ids_are_errors() {
    let tok = Tokenizer::from_file(fixture("tiny-mistral/gguf/tiny-mistral-F32.gguf")).unwrap();
    assert!(tok.decode(&[5000], true).is_err());
    let tok = Tokenizer::from_file(fixture("vocab/smollm2-bpe.gguf")).unwrap();
    assert!(tok.decode(&[u32::MAX], true).is_err());
}
