"""The forced-cut labels bug: `tandem partition digits_cnn --cut /Relu_output_0` scores the model's own output."""

from __future__ import annotations

from pathlib import Path

import pytest

from tandem.contracts.plan import load_plan
from tandem.partitioner.cli import main


def test_a_forced_cut_on_digits_measures_labelled_accuracy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "p.yaml"
    config.write_text("edge: {source: spec}\ncloud: {source: spec}\n")
    out = tmp_path / "plan"
    args = ["partition", "digits_cnn", "--cut", "/Relu_output_0", "--out", str(out), "--config", str(config)]
    assert main([*args, "--no-progress"]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "labels for" not in printed and "labelled top-1" in printed
    plan = load_plan(out)
    cut = next(split for split in plan.splits if split.kind == "split")
    assert [t.name for t in cut.crossing] == ["/Relu_output_0"]
    for result in cut.codecs:
        assert result.accuracy is not None and result.accuracy > 0.9  # the trained CNN, on 200 held-out digits
        assert result.fidelity is not None and result.fidelity.kind == "classes"
