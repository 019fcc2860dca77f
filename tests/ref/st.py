"""st.py — writes and reads safetensors files with nothing but the standard library and torch,
for the fixture generators (Debian's python3-torch ships without the safetensors package).

The layout is the safetensors format: u64 little-endian header length, a JSON header
{name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}, then the tensor bytes,
the header padded with spaces so the data starts 8-byte aligned, as our writer does."""
import json
import struct

import torch

_DTYPES = {
    torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.int8: "I8", torch.bool: "BOOL",
}
_TORCH = {v: k for k, v in _DTYPES.items()}


def save(tensors, path, metadata=None):
    """Writes {name: tensor} to path (tensors made contiguous, CPU)."""
    header, blobs, off = {}, [], 0
    for name in tensors:
        t = tensors[name].detach().cpu().contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * ((-len(hjson)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)


def load(path):
    """Reads a safetensors file into ({name: tensor}, metadata)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        t = torch.frombuffer(bytearray(data[b:e]), dtype=_TORCH[info["dtype"]]) if e > b else \
            torch.empty(0, dtype=_TORCH[info["dtype"]])
        out[name] = t.reshape(info["shape"])
    return out, meta
