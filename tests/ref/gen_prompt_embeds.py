"""gen_prompt_embeds.py — the text-encoder side of prompt weighting (infer/prompt_weights.c):
clip_skip and A1111's weighting, from the real transformers v4.33.3 CLIPTextModel.

Run from the repository root with Debian's torch: /usr/bin/python3 tests/ref/gen_prompt_embeds.py
Reads the tiny CLIP fixture tests/fixtures/models/clip_text_tiny/ (config, weights, input_ids
(2, 16)) and writes tests/fixtures/prompts/clip_text_tiny_embeds.safetensors:
  input_ids     the fixture's (2, 16), taken as two chunks of one prompt
  weights       (2, 16) per-token weights (1 at positions 0 and 15, 0.5..2 in between; row 1 all 1)
  clip_skip.K   K = 0, 1, 2: diffusers' rule (encode_prompt's clip_skip, added in v0.22):
                K = 0 last_hidden_state, else text_model.final_layer_norm(hidden_states[-(K + 1)])
  weighted.K    A1111's weighting of clip_skip.K per chunk (sd_hijack_clip.process_tokens):
                z * w, then z * (z_before.mean() / z_after.mean()), in float32 torch
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "..", "shared", "oracle"))
import oracle  # noqa: E402,F401  (puts transformers v4.33.3 and the shim on sys.path)
import torch  # noqa: E402
import transformers  # noqa: E402

import st  # noqa: E402

SRC = os.path.join(ROOT, "tests", "fixtures", "models", "clip_text_tiny")
OUT = os.path.join(ROOT, "tests", "fixtures", "prompts")


def main():
    os.makedirs(OUT, exist_ok=True)
    model = transformers.CLIPTextModel.from_pretrained(SRC).eval()
    inputs, _ = st.load(os.path.join(SRC, "inputs.safetensors"))
    ids = inputs["input_ids"]
    g = torch.Generator().manual_seed(5)
    w = 0.5 + 1.5 * torch.rand(ids.shape, generator=g)
    w[:, 0] = 1
    w[:, -1] = 1
    w[1] = 1
    res = {"input_ids": ids, "weights": w}
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        for k in range(3):
            z = out.last_hidden_state if k == 0 else \
                model.text_model.final_layer_norm(out.hidden_states[-(k + 1)])
            res[f"clip_skip.{k}"] = z
            rows = []
            for c in range(ids.shape[0]):
                zc = z[c:c + 1]
                before = zc.mean()
                zc = zc * w[c:c + 1].unsqueeze(-1).expand(zc.shape)
                after = zc.mean()
                rows.append(zc * (before / after))
            res[f"weighted.{k}"] = torch.cat(rows)
    st.save(res, os.path.join(OUT, "clip_text_tiny_embeds.safetensors"),
            metadata={"transformers": "v4.33.3"})


if __name__ == "__main__":
    main()
