#!/usr/bin/env python3
"""Ministral-3-3B-shaped `mistral3` GGUF for speed comparisons (bench vs llama-bench): 26 layers,
hidden 3072, 32/8 heads, head_dim 128, FFN 9216, vocab 131,072, tied embeddings, YaRN factor 16
over 16,384 positions and attention temperature 0.1 as Ministral 3; random Q8_0 weights and a
synthetic SentencePiece vocabulary (the output is meaningless; the bytes read per token are real).

usage: make_synth_ministral3_3b.py OUT-q8_0.gguf
       llama-quantize --allow-requantize OUT-q8_0.gguf OUT-q4_k_m.gguf Q4_K_M   (2.14 GB)
"""
import sys, numpy as np, gguf
out = sys.argv[1]
L, E, H, KV, HD, FF, V = 26, 3072, 32, 8, 128, 9216, 131072
rng = np.random.default_rng(3)
def q8(rows, cols, scale=2e-4):
    nb = rows * cols // 32
    blk = np.empty((nb, 34), dtype=np.uint8)
    blk[:, :2] = np.full(nb, scale, dtype=np.float16).view(np.uint8).reshape(nb, 2)
    blk[:, 2:] = rng.integers(-127, 128, size=(nb, 32), dtype=np.int8).view(np.uint8)
    return blk.reshape(rows, cols // 32 * 34)
w = gguf.GGUFWriter(out, "mistral3")
w.add_name("synthetic-ministral-3-3b"); w.add_block_count(L); w.add_context_length(262144)
w.add_embedding_length(E); w.add_feed_forward_length(FF); w.add_head_count(H); w.add_head_count_kv(KV)
w.add_key_length(HD); w.add_value_length(HD); w.add_rope_dimension_count(HD)
w.add_layer_norm_rms_eps(1e-5); w.add_rope_freq_base(1e6); w.add_vocab_size(V)
w.add_rope_scaling_type(gguf.RopeScalingType.YARN); w.add_rope_scaling_factor(16.0); w.add_rope_scaling_orig_ctx_len(16384)
w.add_key_value("mistral3.rope.scaling.yarn_log_multiplier", 1.0, gguf.GGUFValueType.FLOAT32)
w.add_key_value("mistral3.attention.temperature_scale", 0.1, gguf.GGUFValueType.FLOAT32)
w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
toks = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
types = [2, 3, 3] + [6] * 256
toks += [f"\u2581t{i}" for i in range(V - len(toks))]; types += [1] * (V - len(types))
w.add_tokenizer_model("llama"); w.add_token_list(toks); w.add_token_scores([-float(i) for i in range(V)])
w.add_token_types(types); w.add_bos_token_id(1); w.add_eos_token_id(2); w.add_unk_token_id(0)
Q8 = gguf.GGMLQuantizationType.Q8_0
w.add_tensor("token_embd.weight", q8(V, E), raw_dtype=Q8)
w.add_tensor("output_norm.weight", np.ones(E, dtype=np.float32))
for l in range(L):
    p = f"blk.{l}."
    for n, (r, c) in {"attn_q": (H*HD, E), "attn_k": (KV*HD, E), "attn_v": (KV*HD, E), "attn_output": (E, H*HD),
                      "ffn_gate": (FF, E), "ffn_up": (FF, E), "ffn_down": (E, FF)}.items():
        w.add_tensor(p + n + ".weight", q8(r, c), raw_dtype=Q8)
    w.add_tensor(p + "attn_norm.weight", np.ones(E, dtype=np.float32))
    w.add_tensor(p + "ffn_norm.weight", np.ones(E, dtype=np.float32))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
