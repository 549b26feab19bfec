#!/usr/bin/env python3
"""Writes the tiny-mixtral fixtures: two synthetic Mixtral GGUFs (random weights, fixed seeds)
and their reference logits.

* `tiny-mixtral-F32.gguf`: hidden 64, expert FFN 32, 2 layers, 8 experts, top-2, every tensor F32.
* `tiny-mixtral-Q4_K_M.gguf`: hidden 256 (rows of 256, so Q4_K applies), expert FFN 32, same
  layout otherwise; written in F32 to a temporary file and quantized with
  `llama-quantize ... Q4_K_M` (the router `ffn_gate_inp` stays F32, as llama.cpp keeps it; the
  experts' down projections, rows of 32, fall back to Q5_0 / Q8_0).
* `reference/<variant>.npy`: float64 logits of `ref_llama.py` (this folder) at every position of
  the prompt, stored as float32 (`prompt` rows x vocab).
* `reference/reference.json`: the prompt, the reference's top-1 and top-1 - top-2 margin at each
  position, llama.cpp's top-1 at each position (llama-server, one request per prefix,
  `n_predict` 1, greedy, every token's log-probability) and the largest distance between its
  log-probabilities and the reference's (log-softmax of the logits) over all positions.

usage: make_tiny_mixtral.py OUT_DIR --llama-bin DIR
"""
import argparse, json, os, subprocess, sys, tempfile, time, urllib.request
import numpy as np
import gguf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ref_llama import Model  # noqa: E402

VOCAB = 260  # <unk>, <s>, </s>, the newline byte piece, then 256 words
PROMPT_LEN = 40
SHAPES = {
    "F32": dict(hidden=64, ffn=32, heads=4, kv_heads=2, seed=20261205),
    "Q4_K_M": dict(hidden=256, ffn=32, heads=4, kv_heads=2, seed=20261206),
}
LAYERS, EXPERTS, USED = 2, 8, 2


def vocab():
    # Whole words (not byte pieces) so that llama-server reports every step's probabilities.
    toks = ["<unk>", "<s>", "</s>", "<0x0A>"] + [f"\u2581w{i}" for i in range(256)]
    types = [2, 3, 3, 6] + [1] * 256
    return toks, types


def write_f32(path, hidden, ffn, heads, kv_heads, seed):
    rng = np.random.default_rng(seed)
    hd = hidden // heads
    n = lambda *shape, std: (rng.standard_normal(shape) * std).astype(np.float32)
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("tiny-mixtral")
    w.add_context_length(512)
    w.add_embedding_length(hidden)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_expert_count(EXPERTS)
    w.add_expert_used_count(USED)
    w.add_vocab_size(VOCAB)
    toks, types = vocab()
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores([0.0] * VOCAB)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)
    w.add_tensor("token_embd.weight", n(VOCAB, hidden, std=1.0))
    for l in range(LAYERS):
        p = f"blk.{l}."
        norm = lambda: (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)
        w.add_tensor(p + "attn_norm.weight", norm())
        w.add_tensor(p + "attn_q.weight", n(heads * hd, hidden, std=hidden**-0.5))
        w.add_tensor(p + "attn_k.weight", n(kv_heads * hd, hidden, std=hidden**-0.5))
        w.add_tensor(p + "attn_v.weight", n(kv_heads * hd, hidden, std=hidden**-0.5))
        w.add_tensor(p + "attn_output.weight", n(hidden, heads * hd, std=hidden**-0.5))
        w.add_tensor(p + "ffn_norm.weight", norm())
        # A router with a clear preference per token (std 1 logits), so top-2 is rarely a tie.
        w.add_tensor(p + "ffn_gate_inp.weight", n(EXPERTS, hidden, std=hidden**-0.5 * 1.5))
        w.add_tensor(p + "ffn_gate_exps.weight", n(EXPERTS, ffn, hidden, std=hidden**-0.5))
        w.add_tensor(p + "ffn_up_exps.weight", n(EXPERTS, ffn, hidden, std=hidden**-0.5))
        w.add_tensor(p + "ffn_down_exps.weight", n(EXPERTS, hidden, ffn, std=ffn**-0.5))
    w.add_tensor("output_norm.weight", (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))
    w.add_tensor("output.weight", n(VOCAB, hidden, std=hidden**-0.5 * 3))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def llama_cpp_steps(server, model, prompt):
    """llama.cpp's log-probabilities of every token after each prefix of the prompt."""
    port = 18000 + os.getpid() % 1000
    proc = subprocess.Popen(
        [server, "-m", model, "--port", str(port), "-t", "1", "-c", "512", "-np", "1",
         "--no-warmup"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                with urllib.request.urlopen(base + "/health") as r:
                    if r.status == 200:
                        break
            except Exception:
                time.sleep(0.2)
        out = []
        for i in range(1, len(prompt) + 1):
            body = json.dumps({"prompt": prompt[:i], "n_predict": 1, "n_probs": VOCAB,
                               "temperature": 0.0, "cache_prompt": False,
                               "post_sampling_probs": False}).encode()
            req = urllib.request.Request(base + "/completion", body,
                                         {"Content-Type": "application/json"})
            with urllib.request.urlopen(req) as r:
                res = json.load(r)
            lp = np.full(VOCAB, -np.inf)
            for p in res["completion_probabilities"][0]["top_logprobs"]:
                lp[int(p["id"])] = float(p["logprob"])
            out.append(lp)
        return np.array(out)
    finally:
        proc.terminate()
        proc.wait()


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--llama-bin", required=True)
    a = ap.parse_args()
    os.makedirs(os.path.join(a.out, "reference"), exist_ok=True)
    prompt = [int(t) for t in np.random.default_rng(7).integers(4, VOCAB, PROMPT_LEN)]
    summary = {"prompt": prompt, "layers": LAYERS, "experts": EXPERTS, "experts_used": USED,
               "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for variant, shape in SHAPES.items():
            path = os.path.join(a.out, f"tiny-mixtral-{variant}.gguf")
            if variant == "F32":
                write_f32(path, **shape)
            else:
                f32 = os.path.join(tmp, "f32.gguf")
                write_f32(f32, **shape)
                subprocess.run([os.path.join(a.llama_bin, "llama-quantize"), f32, path, variant, "1"],
                               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            lg = Model(path).logits(prompt)
            np.save(os.path.join(a.out, "reference", f"{variant}.npy"), lg.astype(np.float32))
            srt = np.sort(lg, axis=-1)
            lc = llama_cpp_steps(os.path.join(a.llama_bin, "llama-server"), path, prompt)
            lc_top1 = [int(i) for i in np.argmax(lc, axis=-1)]
            ref_top1 = [int(i) for i in np.argmax(lg, axis=-1)]
            # Log-probabilities, so the distance does not depend on the logits' offset.
            dist = float(np.abs(lc - log_softmax(lg)).max())
            summary["variants"][variant] = {
                "hidden": shape["hidden"], "ffn": shape["ffn"],
                "ref_top1": ref_top1,
                "ref_margin": [float(m) for m in srt[:, -1] - srt[:, -2]],
                "llama_cpp_top1": lc_top1,
                "llama_cpp_top1_agrees_with_ref": sum(a == b for a, b in zip(lc_top1, ref_top1)),
                "llama_cpp_vs_ref_max_logprob_diff": dist,
            }
            print(variant, "llama.cpp top-1 == ref top-1 at",
                  summary["variants"][variant]["llama_cpp_top1_agrees_with_ref"], "of", PROMPT_LEN,
                  "; llama.cpp vs ref max |d logprob|", dist)
    with open(os.path.join(a.out, "reference", "reference.json"), "w") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
