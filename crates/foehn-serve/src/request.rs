//! Reading an OpenAI request body (`/v1/chat/completions`,
//! `/v1/completions`; the types are [`foehn_openai`]'s) and answering what is
//! wrong with it as an [`ApiError`].

use foehn_openai::RequestError;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// Parses a JSON body into `T`, naming the offending field on a type error.
pub(crate) fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::invalid(format!("the request body is not valid UTF-8: {e}")))?;
    if text.trim().is_empty() {
        return Err(ApiError::invalid(
            "the request body is empty: expected a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::invalid(format!("the request body is not valid JSON: {inner}"))
        } else if path.is_empty() || path == "." {
            ApiError::invalid(format!("invalid request body: {inner}"))
        } else {
            ApiError::invalid_param(path.clone(), format!("invalid value for `{path}`: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| ApiError::invalid(format!("the request body is not valid JSON: {e}")))?;
    Ok(value)
}

impl From<RequestError> for ApiError {
    /// A 400 about the field at fault.
    fn from(e: RequestError) -> Self {
        Self {
            param: e.param,
            ..Self::invalid(e.message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foehn_core::{Capabilities, GenerateRequest, Message, Prompt};
    use foehn_openai::{ChatRequest, CompletionRequest};

    fn chat(json: &str) -> Result<GenerateRequest, ApiError> {
        Ok(parse_body::<ChatRequest>(json.as_bytes())?.into_generate(&Capabilities::default())?)
    }

    fn completion(json: &str) -> Result<GenerateRequest, ApiError> {
        let caps = Capabilities {
            token_prompts: true,
            ..Capabilities::default()
        };
        Ok(parse_body::<CompletionRequest>(json.as_bytes())?.into_generate(&caps)?)
    }

    #[test]
    fn chat_fields_reach_the_generate_request() {
        let req = chat(
            r#"{"model":"m","messages":[{"role":"developer","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"hi "},{"type":"text","text":"there"}]}],
                "max_tokens":5,"temperature":0.5,"top_p":0.9,"seed":-1,"stop":"\n","logprobs":true,
                "top_logprobs":2,"response_format":{"type":"text"},"user":"ignored"}"#,
        )
        .unwrap();
        assert_eq!(req.model.as_deref(), Some("m"));
        assert_eq!(
            req.prompt,
            Prompt::Chat(vec![Message::system("be brief"), Message::user("hi there")])
        );
        assert_eq!(
            (req.max_tokens, req.temperature, req.top_p),
            (Some(5), Some(0.5), Some(0.9))
        );
        assert_eq!(req.seed, Some(u64::MAX));
        assert_eq!(req.stop, vec!["\n".to_string()]);
        assert_eq!(req.logprobs, Some(2));
        // max_completion_tokens wins over max_tokens.
        let req = chat(
            r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":5,"max_completion_tokens":7}"#,
        );
        assert_eq!(req.unwrap().max_tokens, Some(7));
    }

    #[test]
    fn bad_chat_requests_name_the_field() {
        let cases = [
            (r#"{"messages":[]}"#, Some("messages")),
            (
                r#"{"messages":[{"role":"wizard","content":"x"}]}"#,
                Some("messages[0].role"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#,
                Some("temperature"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":99999999999}"#,
                Some("max_tokens"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#,
                Some("max_tokens"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
                Some("max_tokens"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"n":2}"#,
                Some("n"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"top_p":2}"#,
                Some("top_p"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]}"#,
                Some("tools"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}}"#,
                Some("response_format"),
            ),
            (
                r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]}"#,
                Some("messages[0].content[0].type"),
            ),
            (r#"{"messages":[{"role":"user","content":"x"}"#, None),
            (r#"[1,2]"#, None),
            (r#""#, None),
            (
                r#"{"messages":[{"role":"user","content":"x"}]} trailing"#,
                None,
            ),
        ];
        for (json, param) in cases {
            let e = chat(json).expect_err(json);
            assert_eq!(e.status.as_u16(), 400, "{json}: {e}");
            if param.is_some() {
                assert_eq!(e.param.as_deref(), param, "{json}: {e}");
            }
        }
        let e = parse_body::<ChatRequest>(b"{\"messages\": \"\xff\"}").unwrap_err();
        assert!(e.message.contains("UTF-8"), "{e}");
    }

    #[test]
    fn completion_prompts_take_text_ids_and_batches_of_one() {
        assert_eq!(
            completion(r#"{"prompt":"Once"}"#).unwrap().prompt,
            Prompt::Text("Once".into())
        );
        assert_eq!(
            completion(r#"{"prompt":["Once"]}"#).unwrap().prompt,
            Prompt::Text("Once".into())
        );
        assert_eq!(
            completion(r#"{"prompt":[1,2]}"#).unwrap().prompt,
            Prompt::Tokens(vec![1, 2])
        );
        assert_eq!(
            completion(r#"{"prompt":[[1,2]]}"#).unwrap().prompt,
            Prompt::Tokens(vec![1, 2])
        );
        assert_eq!(
            completion(r#"{"prompt":"x","logprobs":3}"#)
                .unwrap()
                .logprobs,
            Some(3)
        );
        for bad in [
            r#"{"prompt":["a","b"]}"#,
            r#"{"prompt":[]}"#,
            r#"{"prompt":"x","echo":true}"#,
            r#"{"prompt":"x","logprobs":50}"#,
            r#"{"prompt":{"x":1}}"#,
            r#"{}"#,
        ] {
            assert_eq!(
                completion(bad).expect_err(bad).status.as_u16(),
                400,
                "{bad}"
            );
        }
        let no_ids = parse_body::<CompletionRequest>(br#"{"prompt":[1]}"#).unwrap();
        assert!(no_ids.into_generate(&Capabilities::default()).is_err());
    }
}
