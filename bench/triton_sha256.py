"""SHA-256 of every fixed-size chunk of a device buffer, on the device (Triton), and its references.

Why: a committed product (n x n FP32, 64 MiB at BF16's cap n = 4096) is today copied to the
host and hashed there (``agent/backends.py`` ``TorchBackend``), which takes far longer than the
product itself on a fast GPU. Hashing fixed-size chunks on the device sends only 32 bytes per
chunk across; the host then hashes the leaf digests (:func:`tree_digest`). ``bench/gpu_budget.py``
times both paths; ``tests/verification/test_triton_sha256.py`` runs the kernel in Triton's
interpreter (``TRITON_INTERPRET=1``, CPU tensors) against :mod:`hashlib`.

The kernel gives one lane to one chunk, ``BLOCK`` chunks per program. Each lane loads its
chunk's 64-byte blocks as 16 little-endian 32-bit words, swaps them to SHA-256's big-endian
words and runs the 64 rounds; then the padding block, which is the same for every chunk of a
given size (0x80, zeros, the length in bits), so its message schedule plus the round constants
are 64 constants (:func:`round_constants`). Triton's frontend takes no list of tensors, so the
16 schedule words and the unrolled rounds are generated as Python source text
(:func:`kernel_source`, written to a temporary folder: Triton reads a kernel's source back from
its file).

torch and triton are imported only by :func:`leaf_digests` (numpy by the module): the
references need neither.
"""

from __future__ import annotations

import hashlib
import importlib.util
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

MASK = 0xFFFFFFFF
# FIPS 180-4, 4.2.2 and 5.3.3.
K = (
    0x428A2F98, 0x71374491, 0xB5C0FBCF, 0xE9B5DBA5, 0x3956C25B, 0x59F111F1, 0x923F82A4, 0xAB1C5ED5,
    0xD807AA98, 0x12835B01, 0x243185BE, 0x550C7DC3, 0x72BE5D74, 0x80DEB1FE, 0x9BDC06A7, 0xC19BF174,
    0xE49B69C1, 0xEFBE4786, 0x0FC19DC6, 0x240CA1CC, 0x2DE92C6F, 0x4A7484AA, 0x5CB0A9DC, 0x76F988DA,
    0x983E5152, 0xA831C66D, 0xB00327C8, 0xBF597FC7, 0xC6E00BF3, 0xD5A79147, 0x06CA6351, 0x14292967,
    0x27B70A85, 0x2E1B2138, 0x4D2C6DFC, 0x53380D13, 0x650A7354, 0x766A0ABB, 0x81C2C92E, 0x92722C85,
    0xA2BFE8A1, 0xA81A664B, 0xC24B8B70, 0xC76C51A3, 0xD192E819, 0xD6990624, 0xF40E3585, 0x106AA070,
    0x19A4C116, 0x1E376C08, 0x2748774C, 0x34B0BCB5, 0x391C0CB3, 0x4ED8AA4A, 0x5B9CCA4F, 0x682E6FF3,
    0x748F82EE, 0x78A5636F, 0x84C87814, 0x8CC70208, 0x90BEFFFA, 0xA4506CEB, 0xBEF9A3F7, 0xC67178F2,
)  # fmt: skip
H0 = (
    0x6A09E667,
    0xBB67AE85,
    0x3C6EF372,
    0xA54FF53A,
    0x510E527F,
    0x9B05688C,
    0x1F83D9AB,
    0x5BE0CD19,
)
DIGEST_BYTES = 32
DEFAULT_BLOCK = 128  # chunks (lanes) per program


def check_chunk(chunk: int) -> None:
    """Refuse a chunk size the kernel does not take: a positive multiple of 64 bytes."""
    if chunk <= 0 or chunk % 64:
        raise ValueError(f"chunk must be a positive multiple of 64 bytes, not {chunk}")


def leaf_digests_reference(data: bytes | memoryview, chunk: int) -> bytes:
    """SHA-256 of each ``chunk``-byte piece of ``data``, concatenated (32 bytes a chunk)."""
    check_chunk(chunk)
    size = memoryview(data).nbytes
    if size % chunk:
        raise ValueError(f"{size} bytes is not a whole number of {chunk}-byte chunks")
    view = memoryview(data).cast("B")
    return b"".join(
        hashlib.sha256(view[i : i + chunk]).digest() for i in range(0, len(view), chunk)
    )


def tree_digest(leaves: bytes, prefix: bytes) -> bytes:
    """The commitment over leaf digests: SHA-256 of ``prefix`` followed by the leaves."""
    h = hashlib.sha256(prefix)
    h.update(leaves)
    return h.digest()


def digests_to_bytes(words: Any) -> bytes:
    """The digest bytes of a (chunks, 8) tensor or array of SHA-256 state words (each word
    big-endian, as SHA-256 writes its digest); int32 words are read as their uint32 bits."""
    if hasattr(words, "detach"):  # a torch tensor (uint32 or int32)
        words = words.detach().cpu().contiguous().numpy()
    array = np.ascontiguousarray(words)
    if array.dtype.kind in "iu" and array.dtype.itemsize == 4:
        array = array.view(np.uint32)
    return array.astype(">u4").tobytes()


def padding_constants(chunk: int) -> list[int]:
    """K[t] + W[t] mod 2^32 for the padding block of a ``chunk``-byte message (its schedule is
    the same for every such message)."""
    check_chunk(chunk)
    block = b"\x80" + bytes(55) + struct.pack(">Q", chunk * 8)
    w = list(struct.unpack(">16I", block))
    for t in range(16, 64):
        w.append((_s1(w[t - 2]) + w[t - 7] + _s0(w[t - 15]) + w[t - 16]) & MASK)
    return [(k + x) & MASK for k, x in zip(K, w, strict=True)]


def _rotr(x: int, n: int) -> int:
    return ((x >> n) | (x << (32 - n))) & MASK


def _s0(x: int) -> int:
    return _rotr(x, 7) ^ _rotr(x, 18) ^ (x >> 3)


def _s1(x: int) -> int:
    return _rotr(x, 17) ^ _rotr(x, 19) ^ (x >> 10)


# -- the generated kernel ------------------------------------------------------------------------


def _rotr_src(x: str, n: int) -> str:
    return f"(({x} >> {n}) | ({x} << {32 - n}))"


def _rounds_src(indent: str, constants: list[str], *, words: bool, extend: bool) -> list[str]:
    """Rounds on a..h, one per constant: round i adds ``constants[i]`` and, when ``words``, the
    schedule word w{i % 16}, first extended in place (W[t] from W[t-2], W[t-7], W[t-15],
    W[t-16]) when ``extend``. Ch and Maj in forms without a NOT (Triton's interpreter cannot
    invert a uint32)."""
    lines = []
    big_s1 = f"({_rotr_src('e', 6)} ^ {_rotr_src('e', 11)} ^ {_rotr_src('e', 25)})"
    big_s0 = f"({_rotr_src('a', 2)} ^ {_rotr_src('a', 13)} ^ {_rotr_src('a', 22)})"
    for i, constant in enumerate(constants):
        word = ""
        if words:
            j = i % 16
            if extend:
                w2, w7, w15 = f"w{(j - 2) % 16}", f"w{(j - 7) % 16}", f"w{(j - 15) % 16}"
                s0 = f"({_rotr_src(w15, 7)} ^ {_rotr_src(w15, 18)} ^ ({w15} >> 3))"
                s1 = f"({_rotr_src(w2, 17)} ^ {_rotr_src(w2, 19)} ^ ({w2} >> 10))"
                lines.append(f"{indent}w{j} = {s1} + {w7} + {s0} + w{j}")
            word = f" + w{j}"
        lines += [
            f"{indent}t1 = h + {big_s1} + (g ^ (e & (f ^ g))) + {constant}{word}",
            f"{indent}t2 = {big_s0} + ((a & b) | (c & (a | b)))",
            f"{indent}h = g",
            f"{indent}g = f",
            f"{indent}f = e",
            f"{indent}e = d + t1",
            f"{indent}d = c",
            f"{indent}c = b",
            f"{indent}b = a",
            f"{indent}a = t1 + t2",
        ]
    return lines


def round_constants(chunk: int) -> list[int]:
    """The kernel's table: K[0..63], then K[t] + W[t] of the padding block (128 words)."""
    return list(K) + padding_constants(chunk)


def kernel_source() -> str:
    """The Triton kernel, as Python source (a module).

    Rounds 16-63 of a data block are three turns of one loop of 16 unrolled rounds (the
    schedule words keep their slots w0..w15 from turn to turn), and the padding block's rounds
    four turns of 16, their constants loaded from ``k_ptr`` (:func:`round_constants`): half the
    code of 128 unrolled rounds, which Triton compiles for minutes.
    """
    state = ("a", "b", "c", "d", "e", "f", "g", "h")

    def constant(offset: str, i: int) -> str:
        return f"tl.load(k_ptr + {offset} + {i}).to(tl.uint32, bitcast=True)"

    lines = [
        '"""Generated by bench/triton_sha256.py (kernel_source): SHA-256 of each chunk."""',
        "import triton",
        "import triton.language as tl",
        "",
        "",
        "@triton.jit",
        "def sha256_leaves(",
        "    words_ptr, k_ptr, out_ptr, chunks,",
        "    WORDS: tl.constexpr, BLOCKS: tl.constexpr, BLOCK: tl.constexpr",
        "):",
        "    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)",
        "    mask = idx < chunks",
        "    base = idx.to(tl.int64) * WORDS",
    ]
    lines += [f"    s{j} = tl.full([BLOCK], {H0[j]:#010x}, tl.uint32)" for j in range(8)]
    lines.append("    for blk in range(BLOCKS):")
    lines.append("        p = words_ptr + base + blk * 16")
    for i in range(16):
        lines.append(
            f"        x = tl.load(p + {i}, mask=mask, other=0).to(tl.uint32, bitcast=True)"
        )
        lines.append(
            f"        w{i} = (x << 24) | ((x & 0xFF00) << 8) | ((x >> 8) & 0xFF00) | (x >> 24)"
        )
    lines += [f"        {v} = s{j}" for j, v in enumerate(state)]
    lines += _rounds_src("        ", [f"{k:#010x}" for k in K[:16]], words=True, extend=False)
    lines.append("        for q in range(1, 4):")
    consts = [constant("q * 16", i) for i in range(16)]
    lines += _rounds_src("            ", consts, words=True, extend=True)
    lines += [f"        s{j} = s{j} + {v}" for j, v in enumerate(state)]
    lines.append("    # The padding block: K[t] + W[t], the same for every chunk of this size.")
    lines += [f"    {v} = s{j}" for j, v in enumerate(state)]
    lines.append("    for q in range(4):")
    consts = [constant("64 + q * 16", i) for i in range(16)]
    lines += _rounds_src("        ", consts, words=False, extend=False)
    lines.append("    out = out_ptr + idx.to(tl.int64) * 8")
    for j, v in enumerate(state):
        lines.append(f"    tl.store(out + {j}, (s{j} + {v}).to(tl.int32, bitcast=True), mask=mask)")
    return "\n".join(lines) + "\n"


_KERNEL: list[Any] = []
_TABLES: dict[tuple[int, str], Any] = {}


def kernel() -> Any:
    """The jitted kernel (generated into a temporary folder and imported once per process)."""
    if not _KERNEL:
        name = "interconnect_sha256_leaves"
        path = Path(tempfile.mkdtemp(prefix="interconnect-sha256-")) / f"{name}.py"
        path.write_text(kernel_source())
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        _KERNEL.append(module.sha256_leaves)
    return _KERNEL[0]


def leaf_digests(buffer: Any, chunk: int, *, block: int = DEFAULT_BLOCK) -> Any:
    """SHA-256 of each ``chunk``-byte chunk of the contiguous tensor ``buffer`` (its own bytes,
    any dtype), on its device: a (chunks, 8) uint32 tensor of big-endian state words, so that
    ``digests_to_bytes(result)`` equals :func:`leaf_digests_reference` of the buffer's bytes.

    With ``TRITON_INTERPRET=1`` (set before triton is imported) CPU tensors work too.
    """
    import torch

    check_chunk(chunk)
    if not buffer.is_contiguous():
        raise ValueError("the buffer must be contiguous")
    size = buffer.numel() * buffer.element_size()
    if size % chunk:
        raise ValueError(f"{size} bytes is not a whole number of {chunk}-byte chunks")
    words = buffer.reshape(-1).view(torch.uint8).view(torch.int32)
    key = (chunk, str(buffer.device))
    if key not in _TABLES:
        table = [c - (1 << 32) if c >= 1 << 31 else c for c in round_constants(chunk)]
        _TABLES[key] = torch.tensor(table, dtype=torch.int32, device=buffer.device)
    chunks = size // chunk
    out = torch.empty((chunks, 8), dtype=torch.int32, device=buffer.device)
    if chunks:
        grid = ((chunks + block - 1) // block,)
        kernel()[grid](
            words, _TABLES[key], out, chunks, WORDS=chunk // 4, BLOCKS=chunk // 64, BLOCK=block
        )
    return out.view(torch.uint32)
