#!/usr/bin/env python3
"""float64 numpy reference for `mistral3` (and llama) GGUF models with YaRN RoPE, the
Llama-4 attention temperature and per-layer sliding windows, over long prompts: the logits
of chosen positions of a teacher-forced token sequence.

An extension of the fixtures' ref_llama.py (same dequantization with gguf-py, same
adjacent-pairs RoPE of llama.cpp's `llama`/`mistral3` files), written from the formulas:
  * YaRN (ggml's rope_yarn / ggml_rope_yarn_corr_dims): pair i of head_dim d has
    theta_i = base^(-2i/d); correction dims low = max(0, floor(c(beta_fast))),
    high = min(d-1, ceil(c(beta_slow))) with c(b) = d·ln(n_orig / (2πb)) / (2 ln base);
    ramp_i = 1 - clip((i - low) / max(0.001, high - low), 0, 1);
    freq_i = theta_i/factor·(1 - ramp_i) + theta_i·ramp_i; cos and sin times the magnitude
    m = get_mscale(factor, 1) / get_mscale(factor, yarn_log_multiplier) (or get_mscale(factor, 1)
    without the multiplier), get_mscale(s, k) = 1 + 0.1·k·ln(s).
  * Temperature: queries times 1 + beta·ln(1 + floor(pos / L)) after RoPE, L the
    temperature length or the original context length.
  * Sliding window W (`attention.sliding_window`): query i sees key j iff 0 <= i - j < W, in
    the layers `attention.sliding_window_pattern` marks (a bool per layer, or a period n:
    layer l slides iff l % n < n - 1), every layer without a pattern.

usage: ref_mistral3.py MODEL.gguf --tokens-json FILE --positions 0,5,... --out logits.npy
       [--no-temperature]
"""
import argparse, json, math
import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def field(r, key, default=None):
    f = r.fields.get(key)
    if f is None:
        return default
    v = f.parts[f.data[0]]
    if f.types and f.types[0].name == "STRING":
        return bytes(v).decode()
    return v.tolist()[0] if hasattr(v, "tolist") else v


def mscale(s, k):
    return 1.0 if s <= 1.0 else 0.1 * k * math.log(s) + 1.0


class Model:
    def __init__(self, path, temperature=True):
        r = GGUFReader(path)
        arch = field(r, "general.architecture")
        g = lambda k, d=None: field(r, f"{arch}.{k}", d)
        self.n_layer = g("block_count")
        self.n_embd = g("embedding_length")
        self.n_head = g("attention.head_count")
        self.n_kv = g("attention.head_count_kv", self.n_head)
        self.eps = g("attention.layer_norm_rms_epsilon", 1e-5)
        base = g("rope.freq_base", 10000.0)
        self.head_dim = d = g("attention.key_length", self.n_embd // self.n_head)
        freq = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
        self.magnitude = 1.0
        orig = g("rope.scaling.original_context_length", g("context_length"))
        if g("rope.scaling.type") == "yarn":
            factor = g("rope.scaling.factor")
            bf, bs = g("rope.scaling.yarn_beta_fast", 32.0), g("rope.scaling.yarn_beta_slow", 1.0)
            c = lambda b: d * math.log(orig / (2 * math.pi * b)) / (2 * math.log(base))
            low, high = max(0.0, math.floor(c(bf))), min(d - 1.0, math.ceil(c(bs)))
            i = np.arange(d // 2, dtype=np.float64)
            ramp = 1 - np.clip((i - low) / max(0.001, high - low), 0, 1)
            freq = freq / factor * (1 - ramp) + freq * ramp
            log_mul = g("rope.scaling.yarn_log_multiplier", 0.0)
            m = mscale(factor, 1.0) / mscale(factor, log_mul) if log_mul else mscale(factor, 1.0)
            self.magnitude = m * g("rope.scaling.attn_factor", 1.0)
            self.corr_dims = (low, high)
        self.freq = freq
        beta = g("attention.temperature_scale", 0.0) if temperature else 0.0
        self.temp = (beta, g("attention.temperature_length", orig)) if beta else None
        self.window = g("attention.sliding_window") or None
        pf = r.fields.get(f"{arch}.attention.sliding_window_pattern")
        if pf is None:
            self.sliding = [True] * self.n_layer
        elif len(pf.data) > 1 or pf.types[0].name == "ARRAY":
            self.sliding = [bool(x) for x in pf.contents()]
        else:
            n = int(pf.contents())
            self.sliding = [n == 0 or l % n < n - 1 for l in range(self.n_layer)]
        self.t = {}
        for t in r.tensors:
            a = dequantize(t.data, t.tensor_type).astype(np.float64)
            self.t[t.name] = a.reshape(tuple(int(x) for x in reversed(t.shape.tolist())))
        if "output.weight" not in self.t:
            self.t["output.weight"] = self.t["token_embd.weight"]

    def rmsnorm(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def rope(self, x, pos):
        ang = pos[:, None] * self.freq[None, :]
        c = (np.cos(ang) * self.magnitude)[:, None, :]
        s = (np.sin(ang) * self.magnitude)[:, None, :]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * c - x1 * s
        out[..., 1::2] = x0 * s + x1 * c
        return out

    def logits(self, tokens, positions, chunk=256):
        T = len(tokens)
        pos = np.arange(T, dtype=np.float64)
        x = self.t["token_embd.weight"][tokens]
        hd, rep = self.head_dim, self.n_head // self.n_kv
        for l in range(self.n_layer):
            p = f"blk.{l}."
            h = self.rmsnorm(x, self.t[p + "attn_norm.weight"])
            q = self.rope((h @ self.t[p + "attn_q.weight"].T).reshape(T, self.n_head, hd), pos)
            k = self.rope((h @ self.t[p + "attn_k.weight"].T).reshape(T, self.n_kv, hd), pos)
            v = (h @ self.t[p + "attn_v.weight"].T).reshape(T, self.n_kv, hd)
            if self.temp:
                beta, L = self.temp
                q = q * (1 + beta * np.log(1 + np.floor(pos / L)))[:, None, None]
            kh = np.repeat(k, rep, axis=1).transpose(1, 2, 0)  # heads, hd, T
            vh = np.repeat(v, rep, axis=1).transpose(1, 0, 2)  # heads, T, hd
            o = np.empty((T, self.n_head, hd))
            for a in range(0, T, chunk):
                b = min(T, a + chunk)
                s = (q[a:b].transpose(1, 0, 2) @ kh[:, :, :b]) / math.sqrt(hd)  # heads, c, b
                s += np.triu(np.full((b - a, b), -np.inf), a + 1)[None]
                if self.window and self.sliding[l]:
                    i, j = np.arange(a, b)[:, None], np.arange(b)[None, :]
                    s[:, i - j >= self.window] = -np.inf
                s = np.exp(s - s.max(-1, keepdims=True))
                s /= s.sum(-1, keepdims=True)
                o[a:b] = (s @ vh[:, :b]).transpose(1, 0, 2)
            x = x + o.reshape(T, -1) @ self.t[p + "attn_output.weight"].T
            h = self.rmsnorm(x, self.t[p + "ffn_norm.weight"])
            gate = h @ self.t[p + "ffn_gate.weight"].T
            up = h @ self.t[p + "ffn_up.weight"].T
            x = x + ((gate / (1 + np.exp(-gate))) * up) @ self.t[p + "ffn_down.weight"].T
        h = self.rmsnorm(x[positions], self.t["output_norm.weight"])
        return h @ self.t["output.weight"].T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--tokens-json", required=True, help="a JSON file with a 'tokens' list")
    ap.add_argument("--positions", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-temperature", action="store_true")
    a = ap.parse_args()
    m = Model(a.model, temperature=not a.no_temperature)
    toks = json.load(open(a.tokens_json))["tokens"]
    positions = [int(p) for p in a.positions.split(",")]
    lg = m.logits(np.array(toks), positions)
    np.save(a.out, lg.astype(np.float32))
    print(json.dumps({"corr_dims": getattr(m, "corr_dims", None), "magnitude": m.magnitude,
                      "top1": [int(i) for i in lg.argmax(-1)]}))


if __name__ == "__main__":
    main()
