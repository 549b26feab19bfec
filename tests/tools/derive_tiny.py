#!/usr/bin/env python3
"""Derive the issue-14 variants of the tiny-mistral fixture with gguf-py (independently of
foehn's GGUF writer): the same weights and tokenizer, other metadata.

  mistral3      Ministral 3's settings: arch `mistral3`, YaRN factor 16 over an original
                context of 16,384 (`yarn_log_multiplier` 1, so magnitude 1), Llama-4
                attention temperature 0.1 (`--no-temperature` leaves it out), context
                `--ctx` (32,768), no sliding window.
  mixed-window  per-layer attention: `llama.attention.sliding_window_pattern = [false, true]`
                (layer 0 full, layer 1 sliding with the fixture's window of 16).

usage: derive_tiny.py mistral3|mixed-window tiny-mistral-F32.gguf OUT.gguf [--ctx N] [--no-temperature]
(references: ref_llama.py OUT.gguf --tokens-json ... --positions ... --out ...)
"""
import argparse

import gguf
from gguf import GGUFReader, GGUFValueType, GGUFWriter


def copy(r, w, rename=lambda name: name):
    """Every key of `r` (renamed; dropped where `rename` gives None) and every tensor."""
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        name = rename(f.name)
        if name is None:
            continue
        vtype = f.types[0]
        w.add_key_value(name, f.contents(), vtype, f.types[-1] if vtype == GGUFValueType.ARRAY else None)
    for t in r.tensors:
        w.add_tensor(t.name, t.data, raw_shape=list(reversed(t.shape.tolist())), raw_dtype=t.tensor_type)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("variant", choices=["mistral3", "mixed-window"])
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--ctx", type=int, default=32768)
    ap.add_argument("--no-temperature", action="store_true")
    a = ap.parse_args()
    r = GGUFReader(a.src)
    if a.variant == "mixed-window":
        w = GGUFWriter(a.out, "llama")
        copy(r, w)
        w.add_key_value("llama.attention.sliding_window_pattern", [False, True],
                        GGUFValueType.ARRAY, GGUFValueType.BOOL)
    else:
        arch = "mistral3"
        w = GGUFWriter(a.out, arch)

        def rename(name):
            if not name.startswith("llama."):
                return name
            rest = name[len("llama."):]
            return None if rest in ("context_length", "attention.sliding_window") else f"{arch}.{rest}"

        copy(r, w, rename)
        w.add_context_length(a.ctx)
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(16.0)
        w.add_rope_scaling_orig_ctx_len(16384)
        for key, value in [("rope.scaling.yarn_beta_fast", 32.0), ("rope.scaling.yarn_beta_slow", 1.0),
                           ("rope.scaling.yarn_log_multiplier", 1.0)] + (
                [] if a.no_temperature else [("attention.temperature_scale", 0.1)]):
            w.add_key_value(f"{arch}.{key}", value, GGUFValueType.FLOAT32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
