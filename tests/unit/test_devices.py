"""Device specs load from partitioner/device_specs (package data), and the roofline estimate follows its formula."""

from __future__ import annotations

import numpy as np
import onnx.parser
import pytest
from onnx import numpy_helper

from tandem.partitioner.devices import (
    DEVICES_DIR,
    DeviceSpec,
    estimate_node_costs,
    known_devices,
    load_device_spec,
    node_time,
    speed_ratio,
)
from tandem.partitioner.errors import DeviceSpecError, PartitionError
from tandem.partitioner.flops import NodeCost, count_node_costs

REQUIRED = ("orin_nano_8gb", "orin_nx_16gb", "agx_orin_64gb", "a100_80gb_sxm")


def _spec(**overrides) -> DeviceSpec:
    fields = {
        "name": "test_gpu",
        "title": "Test GPU",
        "kind": "edge",
        "peak_tflops": {"fp32": 1.0, "fp16": 4.0, "int8": 8.0},
        "memory_bandwidth_gbs": 100.0,
        "memory_gb": 8,
        "compute_efficiency": 0.5,
        "memory_efficiency": 0.5,
        "launch_overhead_us": 5.0,
        "power_mode": "test",
        "source": [{"title": "made up for a test", "url": "https://example.invalid/"}],
    }
    fields.update(overrides)
    return DeviceSpec.model_validate(fields)


def _cost(flops: int, float_bytes: int, other_bytes: int = 0, *, kernel: bool = True, fusible: bool = False):
    return NodeCost(
        name="n", op_type="Conv", flops=flops, input_bytes=float_bytes + other_bytes, output_bytes=0,
        weight_bytes=0, float_bytes=float_bytes, float_elements=float_bytes // 4, launches_kernel=kernel,
        fusible=fusible,
    )  # fmt: skip


def _conv_model() -> onnx.ModelProto:
    model = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[1,16,32,32] x) => (float[1,16,32,32] y) {
            c = Conv <pads = [1,1,1,1]> (x, w)
            y = Relu (c)
        }"""
    )
    model.graph.initializer.append(numpy_helper.from_array(np.zeros((16, 16, 3, 3), np.float32), "w"))
    return model


@pytest.mark.parametrize("name", REQUIRED)
def test_shipped_specs_load_with_dense_figures_and_sources(name):
    spec = load_device_spec(name)
    assert spec.name == name
    peaks = spec.peak_tflops
    assert peaks.int8 == pytest.approx(2 * peaks.fp16)  # dense tensor-core rates on Ampere
    assert peaks.fp16 > peaks.fp32
    assert all(ref.url.startswith("https://") for ref in spec.source)
    assert any("nvidia.com" in ref.url for ref in spec.source)
    assert spec.kind == ("cloud" if name.startswith("a100") else "edge")


def test_known_devices_lists_every_yaml_file():
    names = known_devices()
    assert set(REQUIRED) <= set(names)
    assert names == sorted(path.stem for path in DEVICES_DIR.glob("*.yaml"))


def test_load_by_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text((DEVICES_DIR / "orin_nano_8gb.yaml").read_text().replace("68.0", "70.0"))
    assert load_device_spec(path).memory_bandwidth_gbs == 70.0
    assert load_device_spec(str(path)).memory_bandwidth_gbs == 70.0


def test_unknown_name_lists_known_devices():
    with pytest.raises(DeviceSpecError, match="unknown device 'orin_nanno'") as info:
        load_device_spec("orin_nanno")
    assert "orin_nano_8gb" in str(info.value)
    assert isinstance(info.value, PartitionError)


def test_a_partition_config_naming_an_unknown_spec_is_a_config_error_before_any_work(tmp_path):
    from tandem.config import ConfigError, parse_config
    from tandem.partitioner.config import PartitionConfig

    source = str(tmp_path / "partition.yaml")
    with pytest.raises(ConfigError) as caught:
        parse_config({"edge": {"spec": "orin_nano_9gb"}, "cloud": {"spec": "h200"}}, PartitionConfig, source=source)
    message = str(caught.value)
    assert f"{source}: edge.spec: value 'orin_nano_9gb' is not valid: unknown device spec; did you mean " in message
    assert "'orin_nano_8gb'? known: a100_80gb_sxm, agx_orin_64gb," in message
    assert f"{source}: cloud.spec: value 'h200' is not valid: unknown device spec" in message
    own = tmp_path / "my_board.yaml"
    assert PartitionConfig.model_validate({"edge": {"spec": str(own)}}).edge.spec == str(own)  # a file of one's own


def test_bad_key_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text((DEVICES_DIR / "orin_nano_8gb.yaml").read_text().replace("memory_gb:", "memory_gib:"))
    with pytest.raises(DeviceSpecError, match=r"bad\.yaml: memory_gib: unknown key; did you mean 'memory_gb'\?"):
        load_device_spec(path)


def test_efficiency_above_one_is_rejected(tmp_path):
    path = tmp_path / "fast.yaml"
    text = (DEVICES_DIR / "orin_nano_8gb.yaml").read_text()
    path.write_text(text.replace("compute_efficiency: 0.5", "compute_efficiency: 1.5"))
    with pytest.raises(DeviceSpecError, match=r"fast\.yaml: compute_efficiency: value 1\.5 is not valid"):
        load_device_spec(path)


def test_compute_bound_node_time():
    spec = _spec()
    cost = _cost(flops=2_000_000_000, float_bytes=4_000)
    # 2 GFLOP at 4 TFLOP/s x 0.5 = 1 ms; bytes are negligible
    assert node_time(cost, spec, "fp16") == pytest.approx(1e-3 + 5e-6)
    assert node_time(cost, spec, "fp32") == pytest.approx(4e-3 + 5e-6)


def test_memory_bound_node_time_reprices_float_tensors():
    spec = _spec()
    cost = _cost(flops=1_000, float_bytes=40_000_000, other_bytes=8_000_000)
    # fp32: 48 MB at 100 GB/s x 0.5 ; fp16: floats shrink to 20 MB -> 28 MB ; int8: 10 MB + 8 MB
    assert node_time(cost, spec, "fp32") == pytest.approx(48e6 / 50e9 + 5e-6)
    assert node_time(cost, spec, "fp16") == pytest.approx(28e6 / 50e9 + 5e-6)
    assert node_time(cost, spec, "int8") == pytest.approx(18e6 / 50e9 + 5e-6)


def test_nodes_without_kernels_cost_nothing():
    assert node_time(_cost(0, 0, kernel=False), _spec()) == 0.0


def test_fusible_nodes_pay_their_bytes_but_no_launch():
    cost = _cost(flops=1_000, float_bytes=4_000_000, fusible=True)
    assert node_time(cost, _spec(), "fp32") == pytest.approx(4e6 / 50e9)


def test_unknown_precision_is_an_error():
    with pytest.raises(DeviceSpecError, match="unknown precision 'bf16'"):
        node_time(_cost(1, 4), _spec(), "bf16")  # type: ignore[arg-type]


def test_estimate_node_costs_keys_are_node_names():
    model = _conv_model()
    estimate = estimate_node_costs(model, load_device_spec("orin_nano_8gb"))
    assert list(estimate) == list(count_node_costs(model)) == ["Conv_0", "Relu_1"]
    assert all(seconds > 0 for seconds in estimate.values())
    assert estimate["Conv_0"] > estimate["Relu_1"]


def test_speed_ratio_is_the_ratio_of_totals():
    model = _conv_model()
    edge, cloud = load_device_spec("orin_nano_8gb"), load_device_spec("a100_80gb_sxm")
    ratio = speed_ratio(edge, cloud, model)
    expected = sum(estimate_node_costs(model, edge).values()) / sum(estimate_node_costs(model, cloud).values())
    assert ratio == pytest.approx(expected)
    assert ratio > 1
    assert speed_ratio(edge, edge, model) == pytest.approx(1.0)


def test_speed_ratio_of_a_graph_without_kernels_is_an_error():
    model = onnx.parser.parse_model(
        '<ir_version: 8, opset_import: ["" : 17]>\nempty (float[2] a) => (float[2] y) { y = Identity (a) }'
    )
    spec = load_device_spec("orin_nano_8gb")
    with pytest.raises(DeviceSpecError, match="model 'empty': estimated cloud time is zero"):
        speed_ratio(spec, spec, model)
