//! Remote OpenAI-compatible providers and routing between generators (dispatch issue).
