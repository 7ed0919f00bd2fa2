"""SHA-256 of fixed-size chunks on the device (``bench/triton_sha256.py``) against hashlib.

The kernel runs in Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors), bit for bit
against :mod:`hashlib`; those tests are skipped, never passed, without torch or triton (CI has
neither: ``pip install torch==2.13.0 triton==3.6.0`` into the venv to run them). The references,
the padding constants (through a pure-Python model of the kernel's rounds) and the generated
source are checked everywhere.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import os
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from bench import triton_sha256 as sha
from bench.triton_sha256 import (
    H0,
    MASK,
    K,
    digests_to_bytes,
    leaf_digests_reference,
    padding_constants,
    tree_digest,
)


def _rotr(x: int, n: int) -> int:
    return ((x >> n) | (x << (32 - n))) & MASK


def _rounds(state: list[int], constants: list[int], words: list[int] | None) -> list[int]:
    """The kernel's rounds in Python: K[t] + W[t] given whole (padding) or as K and W."""
    a, b, c, d, e, f, g, h = state
    for t in range(64):
        added = constants[t] + (words[t] if words is not None else 0)
        s1 = _rotr(e, 6) ^ _rotr(e, 11) ^ _rotr(e, 25)
        t1 = (h + s1 + (g ^ (e & (f ^ g))) + added) & MASK
        t2 = ((_rotr(a, 2) ^ _rotr(a, 13) ^ _rotr(a, 22)) + ((a & b) | (c & (a | b)))) & MASK
        a, b, c, d, e, f, g, h = (t1 + t2) & MASK, a, b, c, (d + t1) & MASK, e, f, g
    return [(x + y) & MASK for x, y in zip(state, (a, b, c, d, e, f, g, h), strict=True)]


def _model_digest(data: bytes) -> bytes:
    """SHA-256 of ``data`` the way the kernel computes it: each 64-byte block with K and its
    schedule, then the padding block as 64 folded constants."""
    state = list(H0)
    for offset in range(0, len(data), 64):
        w = list(struct.unpack(">16I", data[offset : offset + 64]))
        for t in range(16, 64):
            s0 = _rotr(w[t - 15], 7) ^ _rotr(w[t - 15], 18) ^ (w[t - 15] >> 3)
            s1 = _rotr(w[t - 2], 17) ^ _rotr(w[t - 2], 19) ^ (w[t - 2] >> 10)
            w.append((s1 + w[t - 7] + s0 + w[t - 16]) & MASK)
        state = _rounds(state, list(K), w)
    state = _rounds(state, padding_constants(len(data)), None)
    return struct.pack(">8I", *state)


@pytest.mark.parametrize("chunk", [64, 256, 1024, 4096])
def test_model_with_folded_padding_equals_hashlib(chunk: int) -> None:
    data = os.urandom(chunk)
    assert _model_digest(data) == hashlib.sha256(data).digest()


def test_references() -> None:
    data = os.urandom(256 * 5)
    leaves = leaf_digests_reference(data, 256)
    assert leaves == b"".join(
        hashlib.sha256(data[i : i + 256]).digest() for i in range(0, 1280, 256)
    )
    assert leaf_digests_reference(memoryview(data), 256) == leaves
    assert tree_digest(leaves, b"p|") == hashlib.sha256(b"p|" + leaves).digest()
    words = [list(struct.unpack(">8I", leaves[i : i + 32])) for i in range(0, len(leaves), 32)]
    assert digests_to_bytes(np.array(words, dtype=np.uint32)) == leaves
    assert digests_to_bytes(np.array(words, dtype=np.uint32).view(np.int32)) == leaves
    with pytest.raises(ValueError, match="multiple of 64"):
        leaf_digests_reference(data, 100)
    with pytest.raises(ValueError, match="whole number"):
        leaf_digests_reference(data[:-64], 256)


def test_generated_source_is_python() -> None:
    tree = ast.parse(sha.kernel_source())
    names = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]
    assert names == ["sha256_leaves"]


@pytest.fixture(scope="module")
def interpreted() -> Iterator[Any]:
    """torch, with triton's interpreter on for this module's kernels (skipped without them)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")  # before triton is first imported
        torch = pytest.importorskip(
            "torch", reason="torch cannot be imported (CI has none)", exc_type=ImportError
        )
        triton = pytest.importorskip(
            "triton", reason="triton cannot be imported (CI has none)", exc_type=ImportError
        )
        importlib.import_module("triton.language")
        sha._KERNEL.clear()
        kernel = sha.kernel()
        assert type(kernel).__name__ == "InterpretedFunction", (
            f"triton {triton.__version__} did not take TRITON_INTERPRET=1"
        )
        yield torch
        sha._KERNEL.clear()


@pytest.mark.parametrize(
    ("chunk", "shape", "block"),
    [
        (64, (37 * 16,), 16),  # 3 programs, the last with 11 of 16 lanes masked
        (256, (32, 32), 64),  # a 32 x 32 FP32 "product": 16 chunks in one program
        (1024, (5 * 256,), 8),  # 16 blocks a chunk, then the padding block
    ],
)
def test_kernel_equals_hashlib(
    interpreted: Any, chunk: int, shape: tuple[int, ...], block: int
) -> None:
    torch = interpreted
    gen = torch.Generator().manual_seed(chunk)
    bits = torch.randint(-(2**31), 2**31 - 1, shape, dtype=torch.int32, generator=gen)
    buffer = bits.view(torch.float32)  # every bit pattern, NaNs included
    got = sha.leaf_digests(buffer, chunk, block=block)
    assert got.dtype == torch.uint32
    assert tuple(got.shape) == (buffer.numel() * 4 // chunk, 8)
    assert digests_to_bytes(got) == leaf_digests_reference(buffer.numpy().tobytes(), chunk)


def test_kernel_refuses_bad_sizes(interpreted: Any) -> None:
    torch = interpreted
    with pytest.raises(ValueError, match="whole number"):
        sha.leaf_digests(torch.zeros(48, dtype=torch.float32), 256)
    with pytest.raises(ValueError, match="contiguous"):
        sha.leaf_digests(torch.zeros((64, 64), dtype=torch.float32).t(), 256)
