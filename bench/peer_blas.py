"""peer_blas.py — the BLAS check every PyTorch peer in bench/ imports: which BLAS torch's
matrix products run on, printed on stderr, and a refusal to run on the reference (netlib) BLAS.

Debian's python3-torch is built with BLAS_INFO=generic: its Linear / bmm / baddbmm call the
sgemm_ of whatever the `libblas.so.3` alternative points at. That is netlib's reference BLAS
unless an optimised one is installed, and then every matrix product of the peer is ~14x slower
than a user's PyTorch, which makes any comparison against it unfair. `scripts/setup --dev`
installs libopenblas0-pthread (its alternative takes priority over netlib's).

The check runs one matrix product, then asks the dynamic linker which library provides the
sgemm_ that libtorch_cpu resolves (dlsym on libtorch_cpu's handle, then dladdr) and lists the
BLAS libraries mapped into the process (/proc/self/maps). OpenBLAS, MKL or BLIS pass; netlib's
(a libblas.so* under a `blas/` directory) is refused, as is a BLAS it cannot identify. A torch
that links its BLAS statically (pip's MKL build) has no sgemm_ to find: its BLAS_INFO decides.
OpenBLAS takes its thread count from OMP_NUM_THREADS (as torch does) unless
OPENBLAS_NUM_THREADS is set; the printed line shows it.

usage (in a peer script, before any timing):
    from peer_blas import require_fast_blas
    require_fast_blas()
"""
import ctypes
import os
import re
import sys

import torch

FAST = ("openblas", "mkl", "blis")
REFUSAL = ("Install OpenBLAS with `scripts/setup --dev` (Debian package libopenblas0-pthread) "
           "and run again (installed already? then the libblas.so.3 alternative or "
           "LD_LIBRARY_PATH points elsewhere: `update-alternatives --auto "
           "libblas.so.3-x86_64-linux-gnu`). On netlib's reference BLAS the peer is ~14x slower "
           "at every matrix product than a user's PyTorch, and the comparison is unfair.")


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def mapped(pattern):
    """Real paths of the shared libraries mapped into this process whose file name matches
    pattern (a regular expression, case-insensitive), in map order."""
    seen = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 6 and re.search(pattern, os.path.basename(fields[5]), re.I):
                real = os.path.realpath(fields[5])
                if real not in seen:
                    seen.append(real)
    return seen


def sgemm_provider():
    """Real path of the library whose sgemm_ libtorch_cpu calls, or None (no libtorch_cpu
    mapped, or no sgemm_ in its dependencies: a statically linked BLAS)."""
    torch_libs = mapped(r"^libtorch_cpu\.so")
    if not torch_libs:
        return None
    try:
        fn = ctypes.CDLL(torch_libs[0]).sgemm_  # dlsym in libtorch_cpu's dependency order
    except (OSError, AttributeError):
        return None
    info = _DlInfo()
    addr = ctypes.cast(fn, ctypes.c_void_p)
    if ctypes.CDLL(None).dladdr(addr, ctypes.byref(info)) == 0 or not info.dli_fname:
        return None
    return os.path.realpath(info.dli_fname.decode())


def is_reference(path):
    """True for netlib's reference BLAS (Debian: .../blas/libblas.so.3, the alternative's
    low-priority choice)."""
    return (os.path.basename(os.path.dirname(path)) == "blas"
            and os.path.basename(path).startswith("libblas.so"))


def describe():
    """(verdict, message): verdict is "fast", "reference" or "unknown"; message is one line
    naming the BLAS (for stderr)."""
    a = torch.ones(64, 64)
    torch.mm(a, a)  # an sgemm: the BLAS is loaded and bound from here on
    provider = sgemm_provider()
    info = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
    info = info.group(1) if info else "unknown"
    if provider is not None:
        verdict = ("reference" if is_reference(provider) else
                   "fast" if any(k in provider.lower() for k in FAST) else "unknown")
    else:
        verdict = "fast" if info.lower() in ("mkl", "open", "openblas", "blis") else "unknown"
    threads = None
    for path in mapped(r"openblas"):
        try:
            threads = ctypes.CDLL(path).openblas_get_num_threads()
            break
        except (OSError, AttributeError):
            pass
    alt = "/usr/lib/x86_64-linux-gnu/libblas.so.3"
    msg = (f"peer BLAS: {verdict}: torch {torch.__version__} (BLAS_INFO={info}) calls sgemm_ from "
           f"{provider or 'no shared library (static)'}"
           + (f" with {threads} OpenBLAS threads" if threads is not None else "")
           + (f"; libblas.so.3 alternative -> {os.path.realpath(alt)}" if os.path.exists(alt) else "")
           + f"; BLAS libraries mapped: {', '.join(mapped(r'blas|mkl|blis')) or 'none'}")
    return verdict, msg


def require_fast_blas():
    """Prints which BLAS torch uses on stderr; exits with status 2 unless it is an optimised one
    (OpenBLAS, MKL, BLIS)."""
    verdict, msg = describe()
    print(msg, file=sys.stderr)
    if verdict != "fast":
        why = ("PyTorch runs on the reference (netlib) BLAS here. " if verdict == "reference" else
               "cannot tell which BLAS PyTorch runs on. ")
        print(f"{os.path.basename(sys.argv[0])}: refusing to run: {why}{REFUSAL}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    require_fast_blas()
