#!/usr/bin/env python3
"""Derive a synthetic `mistral3` GGUF from the tiny-mistral fixture: the same weights
and tokenizer, the Ministral 3 RoPE (YaRN factor 16 over an original context of 16,384,
llama.cpp's `yarn_log_multiplier` 1, so magnitude 1) and Llama-4 attention temperature
(beta 0.1), no sliding window. Written with gguf-py, independently of foehn's writer.

usage: make_tiny_mistral3.py tiny-mistral-F32.gguf OUT.gguf [--ctx 32768] [--no-temperature]
(references: ref_llama.py --tokens-json ... --positions ...)
"""
import argparse

import gguf
from gguf import GGUFReader, GGUFValueType, GGUFWriter

DROP = {"sliding_window", "context_length"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--ctx", type=int, default=32768)
    ap.add_argument("--no-temperature", action="store_true")
    a = ap.parse_args()
    r = GGUFReader(a.src)
    arch = "mistral3"
    w = GGUFWriter(a.out, arch)
    for f in r.fields.values():
        name = f.name
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if name.startswith("llama."):
            rest = name[len("llama."):]
            if rest.split(".")[-1] in DROP:
                continue
            name = f"{arch}.{rest}"
        vtype = f.types[0]
        sub = f.types[-1] if vtype == GGUFValueType.ARRAY else None
        w.add_key_value(name, f.contents(), vtype, sub)
    w.add_context_length(a.ctx)
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(16.0)
    w.add_rope_scaling_orig_ctx_len(16384)
    w.add_key_value(f"{arch}.rope.scaling.yarn_beta_fast", 32.0, GGUFValueType.FLOAT32)
    w.add_key_value(f"{arch}.rope.scaling.yarn_beta_slow", 1.0, GGUFValueType.FLOAT32)
    w.add_key_value(f"{arch}.rope.scaling.yarn_log_multiplier", 1.0, GGUFValueType.FLOAT32)
    if not a.no_temperature:
        w.add_key_value(f"{arch}.attention.temperature_scale", 0.1, GGUFValueType.FLOAT32)
    for t in r.tensors:
        w.add_tensor(t.name, t.data, raw_shape=list(reversed(t.shape.tolist())), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
