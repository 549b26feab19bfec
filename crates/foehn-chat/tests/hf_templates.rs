//! Real chat templates from Hugging Face model repos, rendered by
//! `ChatTemplate` and by jinja2 the way transformers renders them
//! (`tests/data/hf_templates.json`, written by `make_hf_templates.py`).

use std::collections::BTreeMap;

use foehn_chat::{ChatError, ChatTemplate, Message};
use serde::Deserialize;

#[derive(Deserialize)]
struct Data {
    conversations: BTreeMap<String, Vec<Message>>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    conversation: String,
    add_generation_prompt: bool,
    template: String,
    bos_token: String,
    eos_token: String,
    expected: Option<String>,
    raised: Option<String>,
}

#[test]
fn real_templates_render_as_transformers_renders_them() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hf_templates.json");
    let data: Data = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(data.cases.len(), 96);
    let mut failures = Vec::new();
    for case in &data.cases {
        let label = format!(
            "{} / {} / add_generation_prompt={}",
            case.name, case.conversation, case.add_generation_prompt
        );
        let template = ChatTemplate::new(&case.template, &case.bos_token, &case.eos_token)
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        let got = template.render(
            &data.conversations[&case.conversation],
            case.add_generation_prompt,
        );
        match (&case.expected, &case.raised, got) {
            (Some(want), _, Ok(got)) if *want == got => {}
            (_, Some(want), Err(ChatError::Raised(got))) if *want == got => {}
            (want, raised, got) => failures.push(format!(
                "{label}\n  want {want:?} / raised {raised:?}\n  got  {got:?}"
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        data.cases.len(),
        failures.join("\n")
    );
}
