"""Codec throughput, compression ratio and error on real conv-net activations.

The activations come from :func:`tandem.models.activations.conv_activations`: post-ReLU
ResNet-18 features of a real photo, the tensors a split would put on the wire.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from tandem.models.activations import conv_activations
from tandem.transport.codec import CodecSpec, decode_tensor, encode_tensor

CODECS = [
    "raw", "raw+lz4", "raw+zstd",
    "fp16", "fp16+lz4", "fp16+zstd",
    "int8", "int8+lz4", "int8+zstd",
    "int8@1", "int8@1+lz4", "int8@1+zstd",
]  # fmt: skip


def measure(array: np.ndarray, codec: str, repeats: int) -> dict[str, Any]:
    """Encode/decode throughput (MB/s of fp32 input), ratio and error for one codec."""
    spec = CodecSpec.parse(codec)
    encode_s, decode_s = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        header, frame = encode_tensor("x", array, spec)
        t1 = time.perf_counter()
        out = decode_tensor(header, frame)
        if header.codec == "raw":
            out = out.copy()  # count materialising the array, not just the zero-copy view
        t2 = time.perf_counter()
        encode_s.append(t1 - t0)
        decode_s.append(t2 - t1)
    megabytes = array.nbytes / 1e6
    error = np.abs(out.astype(np.float64) - array)
    return {
        "codec": codec,
        "encode_MBps": round(megabytes / float(np.median(encode_s)), 1),
        "decode_MBps": round(megabytes / float(np.median(decode_s)), 1),
        "ratio": round(array.nbytes / header.nbytes, 2),
        "wire_bytes": header.nbytes,
        "max_abs_error": float(error.max()),
        "rel_rms_error": float(
            np.sqrt((error**2).mean()) / max(np.sqrt((array.astype(np.float64) ** 2).mean()), 1e-12)
        ),
    }


def _before_fp16(array: np.ndarray) -> bytes:
    """The fp16 encode this codec replaced: NumPy's software float16 cast."""
    return np.clip(array, -65504, 65504).astype("<f2").tobytes()


def _before_int8_zstd(array: np.ndarray) -> bytes:
    """The int8+zstd encode this codec replaced: five temporaries and zstd level 3."""
    import zstandard

    lo, hi = min(float(array.min()), 0.0), max(float(array.max()), 0.0)
    scale = (hi - lo) / 255 or 1.0
    zero = np.clip(np.round(-128 - lo / scale), -128, 127)
    q = np.clip(np.round(array / scale) + zero, -128, 127).astype(np.int8)
    return bytes(zstandard.ZstdCompressor(level=3).compress(q.tobytes()))


def targets(array: np.ndarray, repeats: int) -> dict[str, Any]:
    """Encode MB/s (of fp32 input, median, one thread) of fp16 and int8+zstd against their targets, with the
    implementation each replaced measured in the same run."""

    def rate(encode: Any) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            encode()
            times.append(time.perf_counter() - started)
        return round(array.nbytes / 1e6 / float(np.median(times)), 1)

    fp16, int8_zstd = CodecSpec.parse("fp16"), CodecSpec.parse("int8+zstd")
    return {
        "fp16_encode_MBps": rate(lambda: encode_tensor("x", array, fp16)),
        "fp16_encode_MBps_before": rate(lambda: _before_fp16(array)),
        "fp16_target_MBps": 2000,
        "int8_zstd_encode_MBps": rate(lambda: encode_tensor("x", array, int8_zstd)),
        "int8_zstd_encode_MBps_before": rate(lambda: _before_int8_zstd(array)),
        "int8_zstd_target_MBps": 1000,
        "int8_zstd_bytes": encode_tensor("x", array, int8_zstd)[0].nbytes,
        "int8_zstd_bytes_before": len(_before_int8_zstd(array)),
    }


def run(out_dir: Path, quick: bool) -> dict[str, Any]:
    """Measure every codec on every activation tensor."""
    activations = conv_activations()
    repeats = 5 if quick else 30
    rows = []
    for layer, array in activations.items():
        print(f"   {layer} {list(array.shape)} {array.nbytes / 1e6:.2f} MB, {100 * (array == 0).mean():.0f}% zeros")
        for codec in CODECS:
            row = {"tensor": layer, "shape": list(array.shape), **measure(array, codec, repeats)}
            rows.append(row)
            print(
                f"   {codec:12s} enc {row['encode_MBps']:8.1f} MB/s  dec {row['decode_MBps']:8.1f} MB/s  "
                f"ratio {row['ratio']:6.2f}  rel.rms.err {row['rel_rms_error']:.2e}"
            )
    speed = {layer: targets(array, repeats) for layer, array in activations.items()}
    for layer, row in speed.items():
        print(f"   {layer}: fp16 {row['fp16_encode_MBps']:.0f} MB/s (was {row['fp16_encode_MBps_before']:.0f}), "
              f"int8+zstd {row['int8_zstd_encode_MBps']:.0f} MB/s (was {row['int8_zstd_encode_MBps_before']:.0f})")
    return {"source": __doc__.strip().splitlines()[0], "activations": "resnet18 post-ReLU on china.jpg", "rows": rows,
            "targets": speed}  # fmt: skip


if __name__ == "__main__":
    import json

    print(json.dumps(run(Path("benchmarks/results"), quick=True), indent=2))
