#!/usr/bin/env python3
"""Independent float64 numpy reference for Llama/Mistral-family GGUF models (`llama`,
`mistral`, `mistral3`): dense or mixture-of-experts, with the RoPE scalings, the attention
temperature and the (per-layer) sliding windows the files carry.

Dequantizes every tensor with gguf-py (the GGUF authors' own Python package) and runs the
forward pass in float64: the exact mathematical output of the quantized weights (no
activation quantization, float64 KV). Written from the formulas, not from foehn:
  * RoPE: llama.cpp's adjacent pairs (its converter permutes Q/K rows for these archs).
  * YaRN (ggml's rope_yarn / ggml_rope_yarn_corr_dims): pair i of head_dim d has
    theta_i = base^(-2i/d); correction dims low = max(0, floor(c(beta_fast))),
    high = min(d-1, ceil(c(beta_slow))) with c(b) = d·ln(n_orig / (2πb)) / (2 ln base);
    ramp_i = 1 - clip((i - low) / max(0.001, high - low), 0, 1);
    freq_i = theta_i/factor·(1 - ramp_i) + theta_i·ramp_i; cos and sin times the magnitude
    get_mscale(factor, 1) / get_mscale(factor, yarn_log_multiplier) (or get_mscale(factor, 1)
    without the multiplier) × rope.scaling.attn_factor, get_mscale(s, k) = 1 + 0.1·k·ln(s).
  * Attention temperature (`attention.temperature_scale`): queries times
    1 + beta·ln(1 + floor(pos / L)) after RoPE, L the temperature length or the original
    context length.
  * Sliding window W: query i sees key j iff 0 <= i - j < W, in the layers
    `attention.sliding_window_pattern` marks (a bool per layer, or a period n: layer l
    slides iff l % n < n - 1), in every layer without a pattern.
  * Mixtral (`expert_count` experts, `expert_used_count` per token, merged `ffn_*_exps`
    3-D tensors or per-expert `ffn_*.E` ones): softmax over the router's logits, top-k,
    weights renormalised (llama.cpp's build_moe_ffn with norm_w).
Attention runs in chunks of queries, so prompts of tens of thousands of tokens fit.

usage: ref_llama.py MODEL.gguf --tokens 1,2,3 [--greedy N] [--sliding-window W] [--top K]
       ref_llama.py MODEL.gguf --tokens-json FILE --positions 0,5,... --out logits.npy
                    [--no-temperature]
"""
import argparse, json, math, sys
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
    def __init__(self, path, sliding_window=None, temperature=True):
        r = GGUFReader(path)
        arch = field(r, "general.architecture")
        self.arch = arch
        g = lambda k, d=None: field(r, f"{arch}.{k}", d)
        self.n_layer = g("block_count")
        self.n_embd = g("embedding_length")
        self.n_head = g("attention.head_count")
        self.n_kv = g("attention.head_count_kv", self.n_head)
        self.eps = g("attention.layer_norm_rms_epsilon", 1e-5)
        self.n_expert = g("expert_count", 0)
        self.n_expert_used = g("expert_used_count", 0)
        base = g("rope.freq_base", 10000.0)
        self.head_dim = d = g("attention.key_length", self.n_embd // self.n_head)
        freq = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
        self.magnitude = 1.0
        self.corr_dims = None
        orig = g("rope.scaling.original_context_length", g("context_length"))
        kind = g("rope.scaling.type")
        if kind == "yarn":
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
        elif kind == "linear":
            freq = freq / g("rope.scaling.factor")
        elif kind not in (None, "none"):
            raise SystemExit(f"rope scaling {kind!r} is not implemented here")
        self.freq = freq
        beta = g("attention.temperature_scale", 0.0) if temperature else 0.0
        self.temp = (beta, g("attention.temperature_length", orig)) if beta else None
        self.window = sliding_window or g("attention.sliding_window") or None
        pf = r.fields.get(f"{arch}.attention.sliding_window_pattern")
        if pf is None:
            self.sliding = [True] * self.n_layer
        elif pf.types[0].name == "ARRAY":
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
        ang = pos[:, None] * self.freq[None, :]  # (T, d/2)
        c = (np.cos(ang) * self.magnitude)[:, None, :]
        s = (np.sin(ang) * self.magnitude)[:, None, :]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * c - x1 * s
        out[..., 1::2] = x0 * s + x1 * c
        return out

    @staticmethod
    def swiglu(h, wg, wu, wd):
        gate = h @ wg.T
        up = h @ wu.T
        return ((gate / (1 + np.exp(-gate))) * up) @ wd.T

    def expert(self, p, w, e):
        """Expert e's matrix w (gate, up, down): a slice of the merged 3-D tensor or its own."""
        merged = self.t.get(p + f"ffn_{w}_exps.weight")
        return merged[e] if merged is not None else self.t[p + f"ffn_{w}.{e}.weight"]

    def moe(self, p, h):
        """Mixtral's sparse block: softmax over the router's logits, the top-k experts
        per token, their weights renormalised to sum to 1 (llama.cpp build_moe_ffn, norm_w)."""
        r = h @ self.t[p + "ffn_gate_inp.weight"].T  # (T, n_expert)
        pr = np.exp(r - r.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        out = np.zeros_like(h)
        for t in range(h.shape[0]):
            top = np.argsort(-pr[t], kind="stable")[: self.n_expert_used]
            w = pr[t, top] / pr[t, top].sum()
            for e, we in zip(top, w):
                ws = [self.expert(p, n, int(e)) for n in ("gate", "up", "down")]
                out[t] += we * self.swiglu(h[t : t + 1], *ws)[0]
        return out

    def attention(self, l, q, k, v, chunk=256):
        T, hd, rep = q.shape[0], self.head_dim, self.n_head // self.n_kv
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
        return o.reshape(T, -1)

    def logits(self, tokens, positions=None):
        """The logits of every position (T × vocab), or of `positions` only."""
        tokens = np.asarray(tokens)
        T = len(tokens)
        pos = np.arange(T, dtype=np.float64)
        x = self.t["token_embd.weight"][tokens]
        hd = self.head_dim
        for l in range(self.n_layer):
            p = f"blk.{l}."
            h = self.rmsnorm(x, self.t[p + "attn_norm.weight"])
            q = self.rope((h @ self.t[p + "attn_q.weight"].T).reshape(T, self.n_head, hd), pos)
            k = self.rope((h @ self.t[p + "attn_k.weight"].T).reshape(T, self.n_kv, hd), pos)
            v = (h @ self.t[p + "attn_v.weight"].T).reshape(T, self.n_kv, hd)
            if self.temp:
                beta, L = self.temp
                q = q * (1 + beta * np.log(1 + np.floor(pos / L)))[:, None, None]
            x = x + self.attention(l, q, k, v) @ self.t[p + "attn_output.weight"].T
            h = self.rmsnorm(x, self.t[p + "ffn_norm.weight"])
            if self.n_expert:
                x = x + self.moe(p, h)
            else:
                x = x + self.swiglu(h, *(self.t[p + f"ffn_{w}.weight"] for w in ("gate", "up", "down")))
        rows = x if positions is None else x[positions]
        return self.rmsnorm(rows, self.t["output_norm.weight"]) @ self.t["output.weight"].T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--tokens", help="comma-separated ids: print the last position's top and greedy steps")
    ap.add_argument("--greedy", type=int, default=0)
    ap.add_argument("--sliding-window", type=int, default=None)
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--tokens-json", help="a JSON file with a 'tokens' list: save the logits of --positions")
    ap.add_argument("--positions")
    ap.add_argument("--out")
    ap.add_argument("--no-temperature", action="store_true")
    a = ap.parse_args()
    m = Model(a.model, a.sliding_window, temperature=not a.no_temperature)
    if a.tokens_json:
        toks = json.load(open(a.tokens_json))["tokens"]
        positions = [int(p) for p in a.positions.split(",")]
        lg = m.logits(toks, positions)
        np.save(a.out, lg.astype(np.float32))
        json.dump({"corr_dims": m.corr_dims, "magnitude": m.magnitude,
                   "top1": [int(i) for i in lg.argmax(-1)]}, sys.stdout)
        print()
        return
    toks = [int(x) for x in a.tokens.split(",")]
    lg = m.logits(toks)
    out = {"last_logits_top": [[int(i), float(lg[-1, i])] for i in np.argsort(-lg[-1])[: a.top]]}
    gen = []
    for _ in range(a.greedy):
        nxt = int(np.argmax(m.logits(toks + gen)[-1]))
        gen.append(nxt)
    out["greedy"] = gen
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
