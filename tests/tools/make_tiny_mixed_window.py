#!/usr/bin/env python3
"""tiny-mistral with per-layer attention: layer 0 full, layer 1 sliding (window 16), as
`llama.attention.sliding_window_pattern = [false, true]` (llama.cpp's per-layer form).
Everything else is the F32 fixture's. Written with gguf-py.

usage: make_tiny_mixed_window.py tiny-mistral-F32.gguf OUT.gguf
"""
import sys

from gguf import GGUFReader, GGUFValueType, GGUFWriter


def main():
    src, out = sys.argv[1], sys.argv[2]
    r = GGUFReader(src)
    w = GGUFWriter(out, "llama")
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        vtype = f.types[0]
        w.add_key_value(f.name, f.contents(), vtype, f.types[-1] if vtype == GGUFValueType.ARRAY else None)
    w.add_key_value("llama.attention.sliding_window_pattern", [False, True], GGUFValueType.ARRAY, GGUFValueType.BOOL)
    for t in r.tensors:
        w.add_tensor(t.name, t.data, raw_shape=list(reversed(t.shape.tolist())), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
