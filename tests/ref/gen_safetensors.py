"""gen_safetensors.py — fixtures for tests/nn/test_safetensors.c: one file written by the Python
writer (tests/ref/st.py) holding every dtype it knows, a 0-d tensor, an empty tensor and
metadata, with values the C test recomputes (no randomness).

Run: /usr/bin/python3 tests/ref/gen_safetensors.py   (from the repository root)
Writes tests/fixtures/safetensors/python_dtypes.safetensors. The second fixture of that folder,
clip_text_tiny.safetensors, is a copy of a tiny CLIPTextModel file written by the real
safetensors package (its header layout is what Hugging Face tools produce)."""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "safetensors")


def main():
    os.makedirs(OUT, exist_ok=True)
    base = torch.arange(12, dtype=torch.float64).reshape(3, 4) * 0.25 - 1.0  # -1 .. 1.75
    tensors = {
        "f32": base.to(torch.float32),
        "f64": base.clone(),
        "f16": base.to(torch.float16),
        "bf16": base.to(torch.bfloat16),
        "i64": torch.tensor([[-3, 0, 5], [2**40, -(2**40), 7]], dtype=torch.int64),
        "i32": torch.tensor([-7, 0, 2**31 - 1], dtype=torch.int32),
        "u8": torch.tensor([0, 1, 128, 255], dtype=torch.uint8),
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5, dtype=torch.float32),
        "empty": torch.zeros(0, 4, dtype=torch.float32),
        "f32_5d": torch.arange(2 * 1 * 3 * 1 * 2, dtype=torch.float32).reshape(2, 1, 3, 1, 2),
        "f32_6d": torch.arange(2, dtype=torch.float32).reshape(1, 1, 1, 1, 1, 2),
    }
    st.save(tensors, os.path.join(OUT, "python_dtypes.safetensors"),
            {"format": "pt", "note": "written by gen_safetensors.py"})


if __name__ == "__main__":
    main()
