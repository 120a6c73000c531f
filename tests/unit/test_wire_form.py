"""Which requests a cloud part with the codec inside takes as sent: the exact wire form, or the plain part."""

from __future__ import annotations

import numpy as np

from tandem.cloud_hub.batcher import Tail, WireForm
from tandem.transport.codec import CodecSpec, StaticScales
from tandem.transport.envelope import Envelope, Kind

SCALES = StaticScales((0.05,), (0,))


def _request(codec: str, static: StaticScales | None = None) -> Envelope:
    arrays = {"feat": np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64), "mask": np.ones((1, 4), np.int64)}
    return Envelope.with_arrays(Kind.ACTIVATION, arrays, CodecSpec.parse(codec), {"feat": static} if static else None)


def test_a_variant_takes_only_requests_sent_in_its_exact_wire_form() -> None:
    int8 = Tail("p", 1, "cut-01", executor=None, variant="in-graph-int8",  # type: ignore[arg-type]
                as_sent={"feat": WireForm("int8", SCALES.scale, SCALES.zero_point, None)})  # fmt: skip
    fp16 = Tail("p", 1, "cut-01", executor=None, variant="in-graph-fp16",  # type: ignore[arg-type]
                as_sent={"feat": WireForm("fp16")})  # fmt: skip
    assert int8.takes(_request("int8-static+zstd", SCALES))
    assert not int8.takes(_request("int8+zstd"))  # per-message scales: not what the part's DequantizeLinear holds
    assert not int8.takes(_request("int8-static", StaticScales((0.05,), (3,))))
    assert not int8.takes(_request("raw"))
    assert fp16.takes(_request("fp16+lz4")) and not fp16.takes(_request("int8+zstd"))
    assert int8.batch_key == ("p", 1, "cut-01", "in-graph-int8") and int8.key == ("p", 1, "cut-01")


def test_an_as_sent_tensor_decodes_to_its_wire_array() -> None:
    request = _request("int8-static", SCALES)
    kept = request.arrays(as_sent=frozenset({"feat"}))
    assert kept["feat"].dtype == np.int8 and kept["mask"].dtype == np.int64
    assert np.allclose(kept["feat"].astype(np.float32) * 0.05, request.arrays()["feat"])
