"""Spec entries against model metadata (no server): names, dtypes, dims rule, widths, batch size."""

from __future__ import annotations

import pytest

from joiner.spec import InferenceSpec
from transformer.inference.errors import ModelMismatchError
from transformer.inference.model_check import ModelInfo, plan_entry

SERVER = "grpc://triton:8001"

# As Triton 2.51 reports the example model (gRPC answers give int64 dims as strings).
JET_MLP_METADATA = {
    "name": "jet_mlp",
    "versions": ["1"],
    "platform": "python",
    "inputs": [{"name": "INPUT__0", "datatype": "FP32", "shape": ["-1", "3"]}],
    "outputs": [{"name": "OUTPUT__0", "datatype": "FP32", "shape": ["-1", "1"]}],
}
JET_MLP_CONFIG = {"name": "jet_mlp", "max_batch_size": 8192}


def jet_entry(**changes: object) -> InferenceSpec:
    data: dict[str, object] = {
        "model": "jet_mlp",
        "level": "Jet",
        "inputs": {"INPUT__0": ["Jet_pt", "Jet_eta", "Jet_phi"]},
        "outputs": {"OUTPUT__0": "Jet_score"},
    }
    data.update(changes)
    return InferenceSpec.model_validate(data)


def jet_info() -> ModelInfo:
    return ModelInfo.from_metadata(JET_MLP_METADATA, JET_MLP_CONFIG, server=SERVER)


def test_example_model_plan() -> None:
    info = jet_info()
    assert info.inputs["INPUT__0"].dims == (3,)
    assert info.outputs["OUTPUT__0"].dims == (1,)
    plan = plan_entry(jet_entry(), info, server=SERVER)
    assert plan.batch_size == 8192
    assert plan.output_columns == ("Jet_score",)
    (inp,) = plan.inputs
    assert inp.row_shape == (3,)
    assert inp.dtype.name == "float32"


def test_batch_size_from_spec_and_its_limit() -> None:
    assert plan_entry(jet_entry(batch_size=64), jet_info(), server=SERVER).batch_size == 64
    with pytest.raises(ModelMismatchError, match="batch_size 9000 exceeds the model's max_batch_size 8192"):
        plan_entry(jet_entry(batch_size=9000), jet_info(), server=SERVER)


def test_wrong_tensor_names_are_all_named() -> None:
    entry = jet_entry(inputs={"INPUT__1": ["Jet_pt", "Jet_eta", "Jet_phi"]}, outputs={"SCORE": "Jet_score"})
    with pytest.raises(ModelMismatchError) as caught:
        plan_entry(entry, jet_info(), server=SERVER)
    message = str(caught.value)
    assert "'jet_mlp'" in message
    assert SERVER in message
    assert "input tensor(s) ['INPUT__1'] not in the model (its inputs: ['INPUT__0'])" in message
    assert "['INPUT__0'] are not given" in message
    assert "output tensor(s) ['SCORE'] not in the model" in message
    assert isinstance(caught.value, ValueError)


def test_feature_count_must_match_dims() -> None:
    entry = jet_entry(inputs={"INPUT__0": ["Jet_pt", "Jet_eta"]})
    with pytest.raises(ModelMismatchError, match=r"dims \[3\] per row but the spec stacks 2 column"):
        plan_entry(entry, jet_info(), server=SERVER)


def test_unserved_version() -> None:
    with pytest.raises(ModelMismatchError, match="version 3 is not served"):
        plan_entry(jet_entry(version=3), jet_info(), server=SERVER)


def test_width_k_output_columns_and_scalar_dims() -> None:
    metadata = {
        "name": "m",
        "versions": ["1"],
        "inputs": [{"name": "X", "datatype": "FP64", "shape": [-1]}],
        "outputs": [
            {"name": "P", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "Q", "datatype": "INT64", "shape": [-1]},
        ],
    }
    info = ModelInfo.from_metadata(metadata, {"max_batch_size": 16}, server=SERVER)
    entry = InferenceSpec(model="m", inputs={"X": ["MET_pt"]}, outputs={"P": "probs", "Q": "label"})
    plan = plan_entry(entry, info, server=SERVER)
    assert plan.output_columns == ("probs_0", "probs_1", "probs_2", "probs_3", "label")
    assert plan.inputs[0].row_shape == ()
    assert plan.outputs[1].dtype.name == "int64"


@pytest.mark.parametrize(
    ("datatype", "shape", "match"),
    [
        ("BYTES", [-1, 3], "datatype BYTES"),
        ("FP32", [-1, 3, 2], r"dims \[3, 2\]"),
    ],
)
def test_unsupported_inputs(datatype: str, shape: list[int], match: str) -> None:
    metadata = {
        "name": "jet_mlp",
        "inputs": [{"name": "INPUT__0", "datatype": datatype, "shape": shape}],
        "outputs": JET_MLP_METADATA["outputs"],
    }
    info = ModelInfo.from_metadata(metadata, JET_MLP_CONFIG, server=SERVER)
    with pytest.raises(ModelMismatchError, match=match):
        plan_entry(jet_entry(), info, server=SERVER)


def test_variable_width_output_is_refused() -> None:
    metadata = dict(JET_MLP_METADATA, outputs=[{"name": "OUTPUT__0", "datatype": "FP32", "shape": [-1, -1]}])
    info = ModelInfo.from_metadata(metadata, JET_MLP_CONFIG, server=SERVER)
    with pytest.raises(ModelMismatchError, match="only \\[\\] or \\[k\\] with a fixed k"):
        plan_entry(jet_entry(), info, server=SERVER)


def test_models_without_a_batch_dimension() -> None:
    # max_batch_size 0 with an explicit variable first dim batches; with a fixed one it cannot.
    explicit = dict(JET_MLP_METADATA)
    info = ModelInfo.from_metadata(explicit, {"max_batch_size": 0}, server=SERVER)
    assert plan_entry(jet_entry(), info, server=SERVER).batch_size == 1024
    fixed = dict(JET_MLP_METADATA, inputs=[{"name": "INPUT__0", "datatype": "FP32", "shape": [8, 3]}])
    with pytest.raises(ModelMismatchError, match="does not batch"):
        ModelInfo.from_metadata(fixed, {"max_batch_size": 0}, server=SERVER)
