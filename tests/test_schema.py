"""The matrix schema and reader (quantsweep.schema, quantsweep.matrix_io): every error names file and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import MATRICES, REPO, minimal, with_axes

from quantsweep.errors import ExitCode, InputError, MatrixError
from quantsweep.matrix_io import format_loc, load_matrix, parse_matrix
from quantsweep.planning import expand
from quantsweep.schema import Matrix

SRC = "matrices/x.yaml"


def errors_of(data, source: str = SRC) -> list[str]:
    with pytest.raises(MatrixError) as excinfo:
        parse_matrix(data, source)
    exc = excinfo.value
    assert exc.exit_code == ExitCode.INVALID_INPUT
    lines = str(exc).splitlines()
    assert len(lines) == len(exc.problems)
    assert all(line.startswith(f"{source}: ") for line in lines)
    return lines


def one_error(data, source: str = SRC) -> str:
    lines = errors_of(data, source)
    assert len(lines) == 1, lines
    return lines[0]


# --- field-path errors ---------------------------------------------------------------------------------------
def test_minimal_matrix_is_valid():
    m = parse_matrix(minimal(), SRC)
    assert isinstance(m, Matrix)
    assert m.axes.granularities == ["default"]


def test_unknown_pair_names_index_and_field():
    line = one_error(with_axes(quant_pairs=["wint8_afp16", "wint4_afp16", "wint3"]))
    assert line.startswith("matrices/x.yaml: axes.quant_pairs[2]: unknown quant pair ")


def test_unknown_pair_message_names_the_value():
    line = one_error(with_axes(quant_pairs=["wint8_afp16", "wint4_afp16", "wint3"]))
    assert line.startswith("matrices/x.yaml: axes.quant_pairs[2]: unknown quant pair 'wint3'")


_BAD_TEMPLATE_CASES = [
    pytest.param(with_axes(granularities=["default", "w_grp64"]), "axes.granularities[1]", "'w_grp64'", id="granularity"),
    pytest.param(
        with_axes(quant_pairs=[{"name": "mine", "weight": "int8", "activation": "fp16", "base": "wint9_afp16"}]),
        "axes.quant_pairs[0]",
        "'wint9_afp16'",
        id="inline-base",
    ),
    pytest.param(
        with_axes(quant_pairs=[{"name": "wint8_afp16", "weight": "int8", "activation": "fp16", "base": "wint8_afp16"}]),
        "axes.quant_pairs[0]",
        "'wint8_afp16'",
        id="shadow-pair",
    ),
    pytest.param(with_axes(granularities=[{"name": "default"}]), "axes.granularities[0]", "'default'", id="shadow-gran"),
    pytest.param(minimal(model={"source": "synthetic", "preset": "nope"}), "model", "'nope'", id="synthetic-preset"),
]


@pytest.mark.parametrize("data, loc, value", _BAD_TEMPLATE_CASES)
def test_template_errors_name_the_field(data, loc, value):
    line = one_error(data)
    assert line.startswith(f"{SRC}: {loc}: ")


@pytest.mark.parametrize("data, loc, value", _BAD_TEMPLATE_CASES)
def test_template_errors_name_the_value(data, loc, value):
    line = one_error(data)
    assert value in line
    assert "!r}" not in line


@pytest.mark.parametrize(
    "data, expected",
    [
        (minimal(bogus=1), "matrices/x.yaml: bogus: unknown key (not part of the matrix schema)"),
        (minimal(autoquant={"bogus": 1}), "matrices/x.yaml: autoquant.bogus: unknown key (not part of the matrix schema)"),
        (minimal(canary={"cel": "a/b/c"}), "matrices/x.yaml: canary.cel: unknown key (not part of the matrix schema)"),
        (
            with_axes(quant_pairs=[{"name": "mine", "weight": "int8", "activation": "fp16", "bas": "wint8_afp16"}]),
            "matrices/x.yaml: axes.quant_pairs[0].bas: unknown key (not part of the matrix schema)",
        ),
        (
            with_axes(granularities=[{"name": "g", "override": {}}]),
            "matrices/x.yaml: axes.granularities[0].override: unknown key (not part of the matrix schema)",
        ),
    ],
)
def test_unknown_keys(data, expected):
    assert one_error(data) == expected


def test_bad_method():
    line = one_error(minimal(autoquant={"method": "hessian"}))
    assert line.startswith("matrices/x.yaml: autoquant.method: ")
    assert "gradient" in line and "kl_div" in line


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".hidden", "-x", "x" * 65, "a b", "evil\\x"])
def test_unsafe_name(name):
    line = one_error(minimal(name=name))
    assert line.startswith("matrices/x.yaml: name: ")


@pytest.mark.parametrize("name", ["x", "A.b-c_1", "x" * 64])
def test_safe_names(name):
    assert parse_matrix(minimal(name=name), SRC).name == name


def test_unsafe_names_in_axes_and_sizes():
    assert one_error(with_axes(granularities=[{"name": "../g"}])).startswith(f"{SRC}: axes.granularities[0].name: ")
    assert one_error(with_axes(dataset_sizes=[{"name": "../s", "samples": 4}])).startswith(
        f"{SRC}: axes.dataset_sizes[0].name: "
    )
    assert one_error(minimal(model={"name": "../m"})).startswith(f"{SRC}: model.name: ")


@pytest.mark.parametrize("bits", [0, -1, 16.5, 17, float("inf"), float("nan"), [8, 0], []])
def test_effective_bits_out_of_range(bits):
    line = one_error(minimal(autoquant={"effective_bits": bits}))
    assert line.startswith("matrices/x.yaml: autoquant.effective_bits: ")


def test_effective_bits_scalar_and_list():
    assert parse_matrix(minimal(autoquant={"effective_bits": 6}), SRC).autoquant.effective_bits == [6.0]
    assert parse_matrix(minimal(autoquant={"effective_bits": [16, 4.5]}), SRC).autoquant.effective_bits == [16.0, 4.5]
    assert "duplicate" in one_error(minimal(autoquant={"effective_bits": [8, 8.0]}))


def test_unknown_dataset_size_name():
    line = one_error(with_axes(dataset_sizes=["small", "huge"]))
    assert line == (
        "matrices/x.yaml: axes.dataset_sizes[1]: unknown dataset size 'huge'; dataset.sizes defines: small, medium, large"
    )


def test_duplicate_pair_names():
    line = one_error(with_axes(quant_pairs=["wint8_afp16", "wint4_afp16", "wint8_afp16"]))
    assert line == "matrices/x.yaml: axes.quant_pairs[2]: duplicate entry 'wint8_afp16' (same as [0])"


def test_duplicate_sizes_and_granularities():
    assert one_error(with_axes(dataset_sizes=["small", "small"])).startswith(f"{SRC}: axes.dataset_sizes[1]: duplicate")
    assert one_error(with_axes(granularities=["w_group64", "default", "w_group64"])).startswith(
        f"{SRC}: axes.granularities[2]: duplicate"
    )


def test_case_insensitive_duplicates():
    line = one_error(with_axes(granularities=[{"name": "G"}, {"name": "g"}]))
    assert line == "matrices/x.yaml: axes.granularities[1]: duplicate entry 'g' (same as [0])"
    line = one_error(with_axes(dataset_sizes=[{"name": "Tiny", "samples": 2}, {"name": "tiny", "samples": 2}]))
    assert line.startswith(f"{SRC}: axes.dataset_sizes[1]: duplicate entry 'tiny'")


def test_inline_size_conflicting_with_dataset_sizes():
    line = one_error(with_axes(dataset_sizes=["medium", {"name": "small", "samples": 3}]))
    assert line == "matrices/x.yaml: axes.dataset_sizes[1]: size 'small' is 3 samples here but 16 in dataset.sizes"


def test_inline_size_agreeing_or_new_is_fine():
    m = parse_matrix(with_axes(dataset_sizes=[{"name": "small", "samples": 16}, {"name": "huge", "samples": 9}]), SRC)
    assert len(m.axes.dataset_sizes) == 2


@pytest.mark.parametrize("source", ["hf", "gguf"])
def test_model_source_without_path(source):
    assert one_error(minimal(model={"source": source})) == f"matrices/x.yaml: model: source '{source}' needs `path`"


def test_model_source_rules():
    assert one_error(minimal(model={"source": "gguf", "path": "m.bin"})).startswith(f"{SRC}: model: source 'gguf'")
    assert one_error(minimal(model={"source": "embedded", "path": "x"})) == (
        "matrices/x.yaml: model: source 'embedded' takes no `path`"
    )
    assert one_error(minimal(model={"preset": "llama-tiny"})) == (
        "matrices/x.yaml: model: `preset` is only for source 'synthetic'"
    )
    assert parse_matrix(minimal(model={"source": "hf", "path": "/models/x"}), SRC).model.display_name() == "x"
    assert parse_matrix(minimal(model={"source": "gguf", "path": "a/b.gguf"}), SRC).model.display_name() == "b"


def test_synthetic_with_unknown_preset():
    line = one_error(minimal(model={"source": "synthetic", "preset": "nope"}))
    assert line.startswith("matrices/x.yaml: model: source 'synthetic' needs `preset`, one of ")
    assert "llama-tiny" in line and "qwen3-tiny" in line


@pytest.mark.parametrize("preset", ["llama-tiny", "qwen3-tiny", "qwen3-0.6b"])
def test_synthetic_known_presets(preset):
    m = parse_matrix(minimal(model={"source": "synthetic", "preset": preset}), SRC)
    assert m.model.display_name() == f"synthetic-{preset}"


def test_dataset_source_rules():
    assert one_error(minimal(dataset={"source": "jsonl"})) == "matrices/x.yaml: dataset: source 'jsonl' needs `path`"
    assert one_error(minimal(dataset={"source": "hf"})) == "matrices/x.yaml: dataset: source 'hf' needs `hf_name`"
    assert one_error(minimal(dataset={"sizes": {}})) == "matrices/x.yaml: dataset: `sizes` must name at least one size"
    assert one_error(minimal(dataset={"seq_len": 4})).startswith(f"{SRC}: dataset.seq_len: ")


def test_calib_size_below_batch_size():
    assert one_error(minimal(autoquant={"calib_size": 2, "batch_size": 4})) == (
        "matrices/x.yaml: autoquant.calib_size: must be at least autoquant.batch_size"
    )


def test_inline_pair_rules():
    assert one_error(with_axes(quant_pairs=[{"name": "mine", "weight": "int8", "activation": "fp16"}])).startswith(
        f"{SRC}: axes.quant_pairs[0]: an inline pair needs `base` or `weight_quantizer`"
    )
    bad_attrs = {"name": "mine", "weight": "int8", "activation": "fp16", "weight_quantizer": {"axis": 0}}
    assert one_error(with_axes(quant_pairs=[bad_attrs])).startswith(f"{SRC}: axes.quant_pairs[0].weight_quantizer: ")
    both = {"num_bits": 8, "axis": 0, "block_sizes": {"-1": 64}}
    bad = {"name": "mine", "weight": "int8", "activation": "fp16", "weight_quantizer": both}
    assert "mutually exclusive" in one_error(with_axes(quant_pairs=[bad]))


def test_inline_granularity_overlay_errors():
    line = one_error(with_axes(granularities=[{"name": "g", "overrides": {"*output_quantizer": {"axis": 0}}}]))
    assert line.startswith(f"{SRC}: axes.granularities[0].overrides: Unsupported quant_cfg override key")
    line = one_error(
        with_axes(granularities=[{"name": "g", "overrides": {"*weight_quantizer": {"axis": 0, "block_sizes": {-1: 8}}}}])
    )
    assert "axis" in line and "block_sizes" in line


def test_missing_required_fields():
    assert one_error({"name": "x"}) == "matrices/x.yaml: axes: Field required"
    assert one_error({"axes": {"quant_pairs": ["wint8_afp16"], "dataset_sizes": ["small"]}}) == (
        "matrices/x.yaml: name: Field required"
    )
    assert one_error(with_axes(quant_pairs=[])).startswith(f"{SRC}: axes.quant_pairs: ")


def test_several_problems_one_line_each():
    lines = errors_of(minimal(bogus=1, autoquant={"method": "x", "batch_size": 0}))
    assert len(lines) == 3
    assert {line.split(": ")[1] for line in lines} == {"bogus", "autoquant.method", "autoquant.batch_size"}


@pytest.mark.parametrize("version", ["1", None])
def test_schema_version(version):
    data = minimal(schema_version=version) if version else minimal()
    assert parse_matrix(data, SRC).schema_version == version


def test_schema_version_mismatch():
    assert one_error(minimal(schema_version="2")).startswith("matrices/x.yaml: schema_version: ")
    # an unquoted YAML `1` is an int and is refused: the version is a string
    assert one_error(minimal(schema_version=1)).startswith("matrices/x.yaml: schema_version: ")


def test_format_loc():
    assert format_loc(("axes", "quant_pairs", 2, "ref")) == "axes.quant_pairs[2]"
    assert format_loc(("axes", "granularities", 0, "inline", "overrides")) == "axes.granularities[0].overrides"
    assert format_loc(()) == ""


def test_user_key_named_like_a_union_tag_stays_in_the_path():
    line = one_error(minimal(dataset={"sizes": {"ref": 0}}))
    assert line.startswith("matrices/x.yaml: dataset.sizes.ref: ")


@pytest.mark.parametrize(
    "data, loc",
    [(minimal(labels={"x": [1]}), "labels.x"), (minimal(autoquant={"calib_size": "all"}), "autoquant.calib_size")],
)
def test_union_errors_name_the_field_once(data, loc):
    assert one_error(data).startswith(f"{SRC}: {loc}: ")


@pytest.mark.parametrize(
    "data",
    [
        with_axes(granularities=[{"name": "g", "overrides": {"*weight_quantizer": {"axes": 0}}}]),
        with_axes(granularities=[{"name": "g", "overrides": {"*input_quantizer": {"type": "dyanmic"}}}]),
        with_axes(granularities=[{"name": "g", "overrides": {"*weight_quantizer": {"block_sizes": {"-1": "64"}}}}]),
        with_axes(
            quant_pairs=[
                {"name": "mine", "weight": "int8", "activation": "fp16", "weight_quantizer": {"num_bits": 8, "axs": 0}}
            ]
        ),
    ],
    ids=["attr-typo", "type-typo", "block-size-string", "inline-pair-attr-typo"],
)
def test_overlay_attribute_typos_are_errors(data):
    errors_of(data)


# --- reading files -------------------------------------------------------------------------------------------
def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_load_matrix_error_names_file(tmp_path):
    path = _write(tmp_path, "x.yaml", yaml.safe_dump(with_axes(quant_pairs=["wint8_afp16", "bogus"])))
    with pytest.raises(MatrixError) as excinfo:
        load_matrix(path)
    assert str(excinfo.value).startswith(f"{path}: axes.quant_pairs[1]: unknown quant pair ")
    assert excinfo.value.source == str(path)


def test_load_matrix_accepts_str_path_and_yml(tmp_path):
    path = _write(tmp_path, "x.YML", yaml.safe_dump(minimal()))
    assert load_matrix(str(path)).name == "x"


def test_invalid_yaml_names_line(tmp_path):
    path = _write(tmp_path, "x.yaml", "name: x\naxes:\n  quant_pairs: [wint8_afp16\n  dataset_sizes: [small]\n")
    with pytest.raises(MatrixError) as excinfo:
        load_matrix(path)
    assert str(excinfo.value).startswith(f"{path}: invalid YAML: line 4, column ")


def test_invalid_json_names_line(tmp_path):
    path = _write(tmp_path, "x.json", '{"name": "x",\n "axes": }\n')
    with pytest.raises(MatrixError) as excinfo:
        load_matrix(path)
    assert str(excinfo.value).startswith(f"{path}: invalid JSON: line 2, column ")


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("", "NoneType"), ("just text\n", "str")])
def test_non_mapping_top_level(tmp_path, text, kind):
    path = _write(tmp_path, "x.yaml", text)
    with pytest.raises(MatrixError) as excinfo:
        load_matrix(path)
    assert str(excinfo.value) == f"{path}: the top level must be a mapping, got {kind}"


def test_non_mapping_top_level_parse():
    assert one_error([1, 2]) == "matrices/x.yaml: the top level must be a mapping, got list"


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(MatrixError) as excinfo:
        load_matrix(path)
    assert str(excinfo.value) == f"{path}: file not found"
    assert isinstance(excinfo.value, InputError)


@pytest.mark.parametrize("suffix", [".toml", ".txt", ""])
def test_unsupported_suffix(tmp_path, suffix):
    path = _write(tmp_path, f"x{suffix}", "name: x\n")
    with pytest.raises(MatrixError) as excinfo:
        load_matrix(path)
    assert str(excinfo.value) == f"{path}: unsupported file type {suffix!r}; use .yaml, .yml or .json"


def test_not_utf8(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(MatrixError, match=r"x.yaml: not UTF-8 text \(invalid byte 0xff at offset 6\)"):
        load_matrix(path)


def test_yaml_is_read_with_safe_load(tmp_path):
    marker = tmp_path / "constructed"
    path = _write(tmp_path, "x.yaml", f'name: !!python/object/apply:os.mkdir ["{marker}"]\n')
    with pytest.raises(MatrixError) as excinfo:
        load_matrix(path)
    assert "invalid YAML" in str(excinfo.value)
    assert not marker.exists()
    path = _write(tmp_path, "y.yaml", "name: !!python/object:collections.OrderedDict {}\n")
    with pytest.raises(MatrixError, match="invalid YAML"):
        load_matrix(path)


def test_yaml_and_json_presets_are_equivalent():
    y = load_matrix(MATRICES / "granularity-study.yaml")
    j = load_matrix(MATRICES / "granularity-study.json")
    assert y == j
    py, pj = expand(y), expand(j)
    assert [c.id for c in py.cells] == [c.id for c in pj.cells]
    assert [c.path for c in py.cells] == [c.path for c in pj.cells]
    assert [c.config_hash for c in py.cells] == [c.config_hash for c in pj.cells]
    assert py.warnings == pj.warnings


def test_yaml_written_as_json_is_identical(tmp_path):
    data = yaml.safe_load((MATRICES / "quickstart.yaml").read_text())
    path = _write(tmp_path, "quickstart.json", json.dumps(data))
    assert load_matrix(path) == load_matrix(MATRICES / "quickstart.yaml")


PRESETS = sorted(p for p in MATRICES.iterdir() if p.suffix.lower() in (".yaml", ".yml", ".json"))


def test_presets_found():
    assert {p.name for p in PRESETS} >= {"quickstart.yaml", "granularity-study.yaml", "granularity-study.json"}


@pytest.mark.parametrize("path", PRESETS, ids=[p.name for p in PRESETS])
def test_every_preset_loads_and_expands(path):
    m = load_matrix(path)
    plan = expand(m, str(path.relative_to(REPO)))
    assert plan.cells
    assert len({c.id for c in plan.cells}) == len(plan.cells)
    assert m.name == path.stem
    if m.canary.enabled:
        assert plan.canary_cell is not None


# --- execution ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "execution,field",
    [
        ({"executor": "slurm"}, "execution.executor"),
        ({"workers": 0}, "execution.workers"),
        ({"gpus_per_worker": -1}, "execution.gpus_per_worker"),
        ({"artifacts": "nobody"}, "execution.artifacts"),
        ({"ray_adress": "auto"}, "execution.ray_adress"),
    ],
)
def test_execution_errors_name_the_field(execution, field):
    assert one_error({**minimal(), "execution": execution}).startswith(f"{SRC}: {field}: ")


def test_execution_defaults_to_local_and_never_changes_cell_ids():
    base = parse_matrix(minimal(), SRC)
    ray = parse_matrix({**minimal(), "execution": {"executor": "ray", "workers": 4, "gpus_per_worker": 2}}, SRC)
    assert base.execution.executor == "local" and ray.execution.workers == 4
    assert [c.id for c in expand(base).cells] == [c.id for c in expand(ray).cells]
