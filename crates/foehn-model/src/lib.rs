//! Mistral/Llama transformer: layers, KV cache, CPU and candle backends (model issue).
