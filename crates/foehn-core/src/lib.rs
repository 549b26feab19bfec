//! Core types shared by every foehn crate: the model configuration, and the
//! generation contract (request, event stream, [`Generator`] trait) that the
//! local engine and the remote providers both implement.

#![forbid(unsafe_code)]

mod config;
mod constraint;
mod generate;
mod tools;

pub use config::{AttnTemperature, ModelConfig, MoeConfig, RopeScaling};
pub use constraint::Constraint;
pub use generate::{
    CancelToken, Capabilities, Completion, Event, EventStream, FinishReason, GenerateError,
    GenerateRequest, Generator, Message, Prompt, Role, Timings, TokenEvent, ToolCall, Usage,
};
pub use tools::{
    collect_tool_calls, is_mistral_call_id, parse_tools, tool_request, ToolCallDelta, ToolCallIds,
    ToolChoice, ToolSpec,
};
