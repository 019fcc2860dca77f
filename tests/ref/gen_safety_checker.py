#!/usr/bin/python3
"""gen_safety_checker.py — parity fixtures for the CLIP vision tower and the Stable Diffusion
safety checker, computed by the real upstream code (transformers v4.33.3 CLIPVisionModel,
diffusers v0.21.4 StableDiffusionSafetyChecker) through the oracle (`oracle.py`, its README).

  tests/fixtures/models/clip_vision_tiny/      CLIPVisionModel (config.json, model.safetensors,
                                               inputs.safetensors, outputs.safetensors with
                                               gradients: the oracle's --grad, seed 0,
                                               perturb 0.05), checked by tests/nn/test_models.c
  tests/fixtures/models/safety_checker_tiny/   StableDiffusionSafetyChecker: random tower
                                               (seed 0, perturb 0.05) with concept embeddings
                                               chosen so that, of the 4 inputs,
                                               0: crosses nothing,
                                               1: crosses concept 3 (cos 1 > threshold 0.5),
                                               2: crosses special-care concept 0, and concept 7
                                                  only through the 0.01 special-care adjustment
                                                  (its score is -0.005 without it),
                                               3: crosses special-care concept 1, no concept;
                                               outputs from the oracle's safety_checker mode
                                               (tests/nn/test_safety_checker.c).

Run from the repository root:
    /usr/bin/python3 tests/ref/gen_safety_checker.py [ORACLE_DIR]    (default ../shared/oracle)
"""
import json
import os
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "models")
ORACLE = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "..", "shared", "oracle"))
if not os.path.isdir(ORACLE):
    ORACLE = os.path.abspath("../shared/oracle")
sys.path.insert(0, ORACLE)
import oracle  # noqa: E402  (sets up the upstream paths)
from safetensors.torch import save_file  # noqa: E402  (the oracle's shim)

VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_channels": 3, "image_size": 32, "patch_size": 8, "hidden_act": "quick_gelu",
          "layer_norm_eps": 1e-5}


def write_json(path, d):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(d, f, indent=2, sort_keys=True)
        f.write("\n")


def clip_vision():
    d = os.path.join(OUT, "clip_vision_tiny")
    os.makedirs(d, exist_ok=True)
    cfg = dict(VISION, architectures=["CLIPVisionModel"], model_type="clip_vision_model")
    write_json(os.path.join(d, "config.json"), cfg)
    g = torch.Generator().manual_seed(1234)
    inputs = {"pixel_values": torch.randn(2, 3, 32, 32, generator=g),
              "probe": torch.randn(2, 17, 32, generator=g),
              "probe.pooler_output": torch.randn(2, 32, generator=g)}
    save_file(inputs, os.path.join(d, "inputs.safetensors"))
    subprocess.run([sys.executable, os.path.join(ORACLE, "oracle.py"), "--model", "clip_vision",
                    "--config", os.path.join(d, "config.json"), "--seed", "0", "--perturb", "0.05",
                    "--save-weights", os.path.join(d, "model.safetensors"),
                    "--inputs", os.path.join(d, "inputs.safetensors"),
                    "--out", os.path.join(d, "outputs.safetensors"), "--grad"], check=True)


def safety_checker():
    d = os.path.join(OUT, "safety_checker_tiny")
    os.makedirs(d, exist_ok=True)
    cfg = {"architectures": ["StableDiffusionSafetyChecker"], "projection_dim": 16,
           "vision_config": dict(VISION, hidden_act="gelu"), "text_config": {}}
    torch.manual_seed(0)
    model = oracle.build_model("safety_checker", cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    g = torch.Generator().manual_seed(4321)
    clip_input = torch.randn(4, 3, 32, 32, generator=g)
    images = torch.rand(4, 16, 16, 3, generator=g)
    with torch.no_grad():
        emb = model.visual_projection(model.vision_model(clip_input)[1])
        unit = torch.nn.functional.normalize
        # the tiny tower's embeddings of random inputs are close (cos ~0.95); the dual basis of
        # the 4 embeddings (emb_j . dual_i = [i == j]) tells them apart
        dual = torch.linalg.pinv(emb.double()).t().float()
        concepts = torch.randn(17, 16, generator=g)
        special = torch.randn(3, 16, generator=g)
        concepts[3] = dual[1]
        concepts[7] = dual[2]
        special[0] = dual[2]
        special[1] = dual[3]
        cos_c = unit(emb) @ unit(concepts).t()
        cos_s = unit(emb) @ unit(special).t()
        # thresholds 0.05 above every cosine (0.01 of which the special-care adjustment may
        # add), except the crossings chosen above
        cw = cos_c.max(dim=0).values + 0.05
        cw[3] = cos_c[1, 3] / 2
        cw[7] = cos_c[2, 7] + 0.005
        sw = cos_s.max(dim=0).values + 0.05
        sw[0] = cos_s[2, 0] / 2
        sw[1] = cos_s[3, 1] / 2
        print("target cosines", cos_c[1, 3].item(), cos_c[2, 7].item(), cos_s[2, 0].item(), cos_s[3, 1].item())
        assert min(cos_c[1, 3], cos_s[2, 0], cos_s[3, 1]) > 0.02
        model.concept_embeds.copy_(concepts)
        model.special_care_embeds.copy_(special)
        model.concept_embeds_weights.copy_(cw)
        model.special_care_embeds_weights.copy_(sw)
    write_json(os.path.join(d, "config.json"), cfg)
    sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(d, "model.safetensors"),
              metadata={"model": "safety_checker", "diffusers": oracle.DIFFUSERS_TAG,
                        "transformers": oracle.TRANSFORMERS_TAG})
    inputs = {"clip_input": clip_input, "images": images}
    save_file(inputs, os.path.join(d, "inputs.safetensors"))
    subprocess.run([sys.executable, os.path.join(ORACLE, "oracle.py"), "--model", "safety_checker",
                    "--config", os.path.join(d, "config.json"),
                    "--weights", os.path.join(d, "model.safetensors"),
                    "--inputs", os.path.join(d, "inputs.safetensors"),
                    "--out", os.path.join(d, "outputs.safetensors")], check=True)
    from safetensors.torch import load_file
    out = load_file(os.path.join(d, "outputs.safetensors"))
    flags = out["has_nsfw_concepts"].tolist()
    assert flags == [0, 1, 1, 0], flags
    print("safety_checker_tiny: flags", flags)


if __name__ == "__main__":
    clip_vision()
    safety_checker()
