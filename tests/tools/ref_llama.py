#!/usr/bin/env python3
"""Independent numpy reference for Llama/Mistral-architecture GGUF models, dense or
mixture-of-experts (Mixtral: `{arch}.expert_count` experts, `{arch}.expert_used_count`
of them per token, merged `ffn_*_exps` 3-D tensors or per-expert `ffn_*.E` ones).

Dequantizes every tensor with gguf-py (the GGUF authors' own Python package) and
runs the forward pass in float64: the exact mathematical output of the quantized
weights (no activation quantization, float64 KV). The references in ../fixtures were
made with it.

usage: ref_llama.py MODEL.gguf --tokens 1,2,3 [--greedy N] [--sliding-window W] [--top K]
"""
import argparse, json, sys
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


class Model:
    def __init__(self, path, sliding_window=None):
        r = GGUFReader(path)
        arch = field(r, "general.architecture")
        self.arch = arch
        g = lambda k, d=None: field(r, f"{arch}.{k}", d)
        self.n_layer = g("block_count")
        self.n_embd = g("embedding_length")
        self.n_head = g("attention.head_count")
        self.n_kv = g("attention.head_count_kv", self.n_head)
        self.eps = g("attention.layer_norm_rms_epsilon", 1e-5)
        self.theta = g("rope.freq_base", 10000.0)
        self.head_dim = g("attention.key_length", self.n_embd // self.n_head)
        self.n_expert = g("expert_count", 0)
        self.n_expert_used = g("expert_used_count", 0)
        self.swa = sliding_window if sliding_window else g("attention.sliding_window", None)
        self.t = {}
        for t in r.tensors:
            a = dequantize(t.data, t.tensor_type).astype(np.float64)
            shape = tuple(int(x) for x in reversed(t.shape.tolist()))
            self.t[t.name] = a.reshape(shape)
        if "output.weight" not in self.t:
            self.t["output.weight"] = self.t["token_embd.weight"]

    def rmsnorm(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def rope(self, x, pos):
        # llama.cpp "norm" rope for the llama arch: rotate adjacent pairs
        d = x.shape[-1]
        inv = self.theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
        ang = pos[:, None] * inv[None, :]  # (T, d/2)
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
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

    def logits(self, tokens):
        T = len(tokens)
        pos = np.arange(T, dtype=np.float64)
        x = self.t["token_embd.weight"][tokens]
        hd = self.head_dim
        mask = np.triu(np.full((T, T), -np.inf), 1)
        if self.swa:
            i, j = np.indices((T, T))
            mask[i - j >= self.swa] = -np.inf
        for l in range(self.n_layer):
            p = f"blk.{l}."
            h = self.rmsnorm(x, self.t[p + "attn_norm.weight"])
            q = (h @ self.t[p + "attn_q.weight"].T).reshape(T, self.n_head, hd)
            k = (h @ self.t[p + "attn_k.weight"].T).reshape(T, self.n_kv, hd)
            v = (h @ self.t[p + "attn_v.weight"].T).reshape(T, self.n_kv, hd)
            q, k = self.rope(q, pos), self.rope(k, pos)
            rep = self.n_head // self.n_kv
            k = np.repeat(k, rep, axis=1)
            v = np.repeat(v, rep, axis=1)
            att = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            o = np.einsum("hts,shd->thd", att, v).reshape(T, self.n_head * hd)
            x = x + o @ self.t[p + "attn_output.weight"].T
            h = self.rmsnorm(x, self.t[p + "ffn_norm.weight"])
            if self.n_expert:
                x = x + self.moe(p, h)
            else:
                x = x + self.swiglu(h, *(self.t[p + f"ffn_{w}.weight"] for w in ("gate", "up", "down")))
        h = self.rmsnorm(x, self.t["output_norm.weight"])
        return h @ self.t["output.weight"].T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--greedy", type=int, default=0)
    ap.add_argument("--sliding-window", type=int, default=None)
    ap.add_argument("--top", type=int, default=5)
    a = ap.parse_args()
    m = Model(a.model, a.sliding_window)
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
