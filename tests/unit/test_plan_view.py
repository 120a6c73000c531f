"""The agent's view of a plan: only splits verified for the configured codec, or a named error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tandem.contracts.plan import PlanError
from tandem.edge_agent.plan_view import load_agent_plan
from tests.unit.test_graph import TINY, tiny_samples, write_model


@pytest.fixture(scope="module")
def plan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tandem.partitioner.config import PartitionConfig
    from tandem.partitioner.pipeline import partition

    tmp = tmp_path_factory.mktemp("plan")
    path = write_model(tmp, TINY)
    np.savez(tmp / "inputs.npz", **tiny_samples(1)[0])
    config = PartitionConfig.model_validate(
        {"profiling": {"repetitions": 2, "warmup": 1}, "edge": {"emulation_factor": 20}, "codecs": ["raw", "fp16"]}
    )
    partition(str(path), tmp / "plan", config, inputs=tmp / "inputs.npz", progress=False)
    return tmp / "plan"


def test_the_agent_gets_the_splits_verified_for_its_codec(plan_dir: Path) -> None:
    plan = load_agent_plan(plan_dir, "raw")
    assert any(not split.edge_only for split in plan.splits)
    assert sum(split.edge_only for split in plan.splits) == 1


def test_plan_updates_must_be_for_the_model_the_edge_serves_unless_the_config_names_one(plan_dir: Path) -> None:
    from tandem.edge_agent.config import EdgeConfig
    from tandem.edge_agent.runtime import sync_model

    plan = load_agent_plan(plan_dir, "raw")
    assert plan.model_name == "tiny"  # plan.yaml's model.name
    config = EdgeConfig.model_validate({"device_id": "cam-1", "plan": str(plan_dir), "sync": {"mqtt": {}}})
    assert sync_model(config, plan) == "tiny"
    named = EdgeConfig.model_validate(
        {"device_id": "cam-1", "plan": str(plan_dir), "sync": {"mqtt": {}, "model": "resnet50"}}
    )
    assert sync_model(named, plan) == "resnet50"


def test_a_codec_the_plan_never_verified_is_an_error_not_a_silent_edge_only_agent(plan_dir: Path) -> None:
    with pytest.raises(
        PlanError,
        match=r"codec 'int8\+zstd' \(the edge config's `codec`\) is not verified on any split of plan .* that uses "
        r"the hub, so only edge-only would be left; verified: \[.*'raw'.*\]",
    ):
        load_agent_plan(plan_dir, "int8+zstd")
