"""gen_textual_inversion.py — fixtures for textual inversion (tests/infer/test_embeddings.c and
tests/recipes/test_recipe_textual_inversion.c), from the real upstream code in
../shared/oracle/upstream on the tiny SD 1.x pipeline of tests/fixtures/pipelines/sd1 (its CLIP
tokenizer and 32-wide text encoder, UNet and scheduler).

Run with Debian's torch: /usr/bin/python3 tests/ref/gen_textual_inversion.py
Writes into tests/fixtures/ti/ (deterministic):

1. Loading (diffusers v0.21.4 TextualInversionLoaderMixin.load_textual_inversion and
   maybe_convert_prompt, transformers v4.33.3 CLIPTokenizer / CLIPTextModel):
   cat.safetensors     diffusers format, one vector (D) under "<cat>"
   dog.safetensors     diffusers format, 3 vectors (3, D) under "<dog>" (learned_embeds layout)
   zqstyle.safetensors   kohya / A1111 "emb_params" (2, D); diffusers takes it with token="zqstyle"
   a1111.safetensors   "string_to_param.*" (2, D) with metadata name "zqold"; diffusers loads
                       the A1111 state dict {"string_to_param": {"*": t}, "name": "zqold"}
   wide.safetensors    "<wide>" of width D + 8 (must be refused)
   load.safetensors    for each prompt i: prompt<i>.ids I64 [1, 77] (after maybe_convert_prompt),
                       prompt<i>.hidden F32 [1, 77, D] (last_hidden_state), prompt<i>.pooled
                       F32 [1, D] (pooler_output: argmax(ids), an added token's position);
                       metadata prompt<i> and converted<i> (the texts)

2. One training step of examples/textual_inversion/textual_inversion.py (num_vectors 2:
   "<emo>", "<emo>_1", initializer_token "face"), latents given (the step after the VAE):
   step.safetensors    latents F32 [2, 4, 4, 4], noise, timesteps I64 [2], input_ids I64 [2, 77]
                       (templates "a photo of a {}" and "a painting in the style of {}" with
                       "<emo> <emo>_1"), rows_init F32 [2, D], loss F32 [1], grad_rows F32 [2, D]
                       (the embedding gradient of the two new rows), rows_after F32 [2, D] (after
                       AdamW lr 5e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2 on the whole
                       table, then the script's restore of every other row), others_changed F32
                       [1] (max |change| of the other rows: 0)
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ORACLE = os.path.join(HERE, "..", "..", "..", "shared", "oracle")
sys.path.insert(0, os.path.join(ORACLE, "upstream", "transformers-v4.33.3", "src"))
sys.path.insert(0, os.path.join(ORACLE, "upstream", "diffusers-v0.21.4", "src"))
sys.path.insert(0, os.path.join(ORACLE, "shim"))
sys.path.insert(0, HERE)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers.loaders import TextualInversionLoaderMixin  # noqa: E402
from safetensors.torch import save_file, load_file  # noqa: E402  (the oracle's shim)

import st  # noqa: E402

SD1 = os.path.join(HERE, "..", "fixtures", "pipelines", "sd1")
OUT = os.path.join(HERE, "..", "fixtures", "ti")

PROMPTS = ["a <cat> next to a <dog>", "<dog> in zqstyle style", "zqold, a <cat>", "plain words only"]


class Loader(TextualInversionLoaderMixin):
    """The mixin on a tokenizer and a text encoder (what a pipeline gives it)."""

    def __init__(self, tokenizer, text_encoder):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.components = {"tokenizer": tokenizer, "text_encoder": text_encoder}


def load_parts():
    tok = transformers.CLIPTokenizer.from_pretrained(os.path.join(SD1, "tokenizer"))
    te = transformers.CLIPTextModel.from_pretrained(os.path.join(SD1, "text_encoder"),
                                                variant="fp16").float().eval()
    return tok, te


def loading():
    tok, te = load_parts()
    d = te.config.hidden_size
    g = torch.Generator().manual_seed(23)
    cat = torch.randn((d,), generator=g) * 0.3
    dog = torch.randn((3, d), generator=g) * 0.3
    style = torch.randn((2, d), generator=g) * 0.3
    old = torch.randn((2, d), generator=g) * 0.3
    save_file({"<cat>": cat}, os.path.join(OUT, "cat.safetensors"), metadata={"format": "pt"})
    save_file({"<dog>": dog}, os.path.join(OUT, "dog.safetensors"), metadata={"format": "pt"})
    save_file({"emb_params": style}, os.path.join(OUT, "zqstyle.safetensors"), metadata={"format": "pt"})
    save_file({"string_to_param.*": old}, os.path.join(OUT, "a1111.safetensors"),
              metadata={"format": "pt", "name": "zqold"})
    save_file({"<wide>": torch.randn((d + 8,), generator=g)}, os.path.join(OUT, "wide.safetensors"),
              metadata={"format": "pt"})

    pipe = Loader(tok, te)
    pipe.load_textual_inversion(os.path.join(OUT, "cat.safetensors"))
    pipe.load_textual_inversion(os.path.join(OUT, "dog.safetensors"))
    pipe.load_textual_inversion(load_file(os.path.join(OUT, "zqstyle.safetensors")), token="zqstyle")
    pipe.load_textual_inversion({"string_to_param": {"*": old}, "name": "zqold"})
    try:
        pipe.load_textual_inversion(os.path.join(OUT, "cat.safetensors"))
        raise SystemExit("a clash was accepted")
    except ValueError as e:
        print("clash:", str(e)[:80])

    tensors, meta = {}, {"generator": "tests/ref/gen_textual_inversion.py", "diffusers": "v0.21.4",
                         "transformers": "v4.33.3"}
    for i, p in enumerate(PROMPTS):
        conv = pipe.maybe_convert_prompt(p, tok)
        ids = tok(conv, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        with torch.no_grad():
            out = te(ids)
        tensors[f"prompt{i}.ids"] = ids
        tensors[f"prompt{i}.hidden"] = out.last_hidden_state
        tensors[f"prompt{i}.pooled"] = out.pooler_output
        meta[f"prompt{i}"] = p
        meta[f"converted{i}"] = conv
        print(f"{p!r} -> {conv!r}: {ids[0, :12].tolist()}")
    meta["len_tokenizer"] = str(len(tok))
    st.save(tensors, os.path.join(OUT, "load.safetensors"), meta)


def step():
    tok, te = load_parts()
    unet = diffusers.UNet2DConditionModel.from_pretrained(os.path.join(SD1, "unet"),
                                                       variant="fp16").float().eval()
    sched = diffusers.DDPMScheduler.from_pretrained(os.path.join(SD1, "scheduler"))
    placeholder = ["<emo>", "<emo>_1"]
    assert tok.add_tokens(placeholder) == 2
    init_ids = tok.encode("face", add_special_tokens=False)
    assert len(init_ids) == 1
    ids_new = tok.convert_tokens_to_ids(placeholder)
    te.resize_token_embeddings(len(tok))
    emb = te.get_input_embeddings().weight
    with torch.no_grad():
        for i in ids_new:
            emb[i] = emb[init_ids[0]].clone()
    te.text_model.encoder.requires_grad_(False)
    te.text_model.final_layer_norm.requires_grad_(False)
    te.text_model.embeddings.position_embedding.requires_grad_(False)
    unet.requires_grad_(False)
    orig = emb.data.clone()
    rows_init = emb.data[ids_new[0]:ids_new[-1] + 1].clone()

    g = torch.Generator().manual_seed(29)
    latents = torch.randn((2, 4, 4, 4), generator=g)
    noise = torch.randn((2, 4, 4, 4), generator=g)
    timesteps = torch.tensor([100, 650], dtype=torch.int64)
    s = " ".join(tok.convert_ids_to_tokens(ids_new))
    texts = ["a photo of a {}".format(s), "a painting in the style of {}".format(s)]
    input_ids = torch.cat([tok(t, padding="max_length", truncation=True, max_length=tok.model_max_length,
                               return_tensors="pt").input_ids for t in texts])
    opt = torch.optim.AdamW(te.get_input_embeddings().parameters(), lr=5e-3, betas=(0.9, 0.999),
                            weight_decay=1e-2, eps=1e-8)
    te.train()  # as the script (dropout 0 in this config)
    noisy = sched.add_noise(latents, noise, timesteps)
    hidden = te(input_ids)[0]
    pred = unet(noisy, timesteps, hidden).sample
    target = noise
    loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
    loss.backward()
    grad_rows = emb.grad[ids_new[0]:ids_new[-1] + 1].clone()
    opt.step()
    opt.zero_grad()
    index_no_updates = torch.ones((len(tok),), dtype=torch.bool)
    index_no_updates[min(ids_new):max(ids_new) + 1] = False
    with torch.no_grad():
        emb[index_no_updates] = orig[index_no_updates]
    rows_after = emb.data[ids_new[0]:ids_new[-1] + 1].clone()
    others = (emb.data[index_no_updates] - orig[index_no_updates]).abs().max().reshape(1)
    print("step: loss", loss.item(), "grad", grad_rows.abs().max().item(), "others", others.item())
    st.save({"latents": latents, "noise": noise, "timesteps": timesteps, "input_ids": input_ids,
             "rows_init": rows_init, "loss": loss.detach().reshape(1), "grad_rows": grad_rows,
             "rows_after": rows_after, "others_changed": others},
            os.path.join(OUT, "step.safetensors"),
            {"generator": "tests/ref/gen_textual_inversion.py", "diffusers": "v0.21.4",
             "transformers": "v4.33.3", "texts": "|".join(texts), "lr": "5e-3", "weight_decay": "1e-2"})


def main():
    os.makedirs(OUT, exist_ok=True)
    loading()
    step()


if __name__ == "__main__":
    main()
