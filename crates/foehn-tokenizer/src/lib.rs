//! One `Tokenizer` for every route: tokenizer.json, SentencePiece `tokenizer.model`, Tekken and GGUF metadata.
