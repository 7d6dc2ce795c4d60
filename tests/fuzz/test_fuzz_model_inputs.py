"""Hardening: a broken model or dataset file is an input error (exit 2, one `error:` line naming the file, nothing
created or changed), whichever command meets it: `dry-run`, `run` or `weights`.

Hypothesis corrupts a real tiny Llama folder (transformers' own `save_pretrained`, built once per module, with the
embedded model's tokenizer), the embedded GGUF and text/JSONL datasets, and the harness runs the real CLI on each
case in-process. The corruptions are chosen so that every case is wrong (a cut JSON, a shape whose size differs, an
offset shifted): a case that happened to be valid would test nothing. A few failures no header shows (shapes that
disagree with config.json, a tokenizer.json that is JSON but not a tokenizer, tensors missing) are driven through
`run`, which loads the model.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness import expect_failure, invoke
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantsweep.inputs.hf_folders import check_hf_folder
from quantsweep.inputs.text_files import text_warnings
from quantsweep.inputs.transformers_names import transformers_architectures

os.environ.setdefault("TQDM_DISABLE", "1")


def fuzz(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --- the real inputs, built once -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A tiny Llama saved by transformers (safetensors), with the embedded model's tokenizer files."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from quantsweep.engine.models import embedded_tokenizer_folder

    folder = tmp_path_factory.mktemp("tiny") / "model"
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=49152, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=256, tie_word_embeddings=True,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tok = embedded_tokenizer_folder()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tok / name).is_file():
            shutil.copy(tok / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def gguf_bytes() -> bytes:
    from quantsweep.engine.models import embedded_gguf_path

    return embedded_gguf_path().read_bytes()


def copy_model(tiny: Path, tmp: Path) -> Path:
    folder = tmp / "model"
    shutil.copytree(tiny, folder)
    return folder


def write_matrix(tmp: Path, model: dict[str, Any], dataset: dict[str, Any] | None = None) -> Path:
    doc = {
        "schema_version": "1",
        "name": "fuzz",
        "model": {"device": "cpu", **model},
        "dataset": {"sizes": {"small": 4}, "eval_samples": 4, "seq_len": 32, **(dataset or {"source": "embedded"})},
        "axes": {"quant_pairs": ["wint8_afp16"], "dataset_sizes": ["small"]},
        "canary": {"enabled": False},
        "output_root": "runs",
    }
    path = tmp / "matrix.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def drive(cmd: str, tmp: Path, model_path: Path, names: Path | str, source: str = "hf") -> str:
    """`cmd` on a matrix (dry-run, run) or `--model` (weights) naming `model_path`; it must fail cleanly."""
    if cmd == "weights":
        args = ["weights", "--model", str(model_path)]
    else:
        args = [cmd, "-m", str(write_matrix(tmp, {"source": source, "path": str(model_path)}))]
    o = expect_failure(args, tmp, names)
    label = "--model" if cmd == "weights" else "model.path"
    assert label in o.stderr, o.describe()
    return o.stderr


def drive_dataset(cmd: str, tmp: Path, dataset: dict[str, Any], names: Path | str) -> str:
    o = expect_failure([cmd, "-m", str(write_matrix(tmp, {"source": "embedded"}, dataset))], tmp, names)
    assert "dataset.path" in o.stderr, o.describe()
    return o.stderr


MATRIX_CMDS = st.sampled_from(["dry-run", "run"])
ALL_CMDS = st.sampled_from(["dry-run", "run", "weights"])


def header(path: Path) -> tuple[int, dict[str, Any], bytes]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return n, json.loads(data[8 : 8 + n]), data[8 + n :]


def with_header(doc: Any, body: bytes) -> bytes:
    raw = json.dumps(doc).encode()
    return struct.pack("<Q", len(raw)) + raw + body


# --- safetensors ----------------------------------------------------------------------------------------------
@fuzz(14)
@given(cmd=ALL_CMDS, cut=st.floats(0.0, 0.9999))
def test_truncated_safetensors(tiny, cmd, cut):
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        folder = copy_model(tiny, tmp)
        f = folder / "model.safetensors"
        data = f.read_bytes()
        f.write_bytes(data[: int(cut * len(data))])
        msg = drive(cmd, tmp, folder, f)
        assert "truncated" in msg or "not a safetensors file" in msg or "header" in msg, msg


@fuzz(8)
@given(cmd=ALL_CMDS, length=st.integers(0, 2**64 - 1))
def test_header_length_overwritten(tiny, cmd, length):
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        folder = copy_model(tiny, tmp)
        f = folder / "model.safetensors"
        data = f.read_bytes()
        if length == struct.unpack("<Q", data[:8])[0]:
            length += 1
        f.write_bytes(struct.pack("<Q", length) + data[8:])
        drive(cmd, tmp, folder, f)


def _mangle(kind: str, draw: Callable[..., Any], doc: dict[str, Any], body: bytes) -> bytes:
    names = sorted(k for k in doc if k != "__metadata__")
    name = draw(st.sampled_from(names))
    entry = doc[name]
    if kind == "cut_json":  # the JSON text cut short, padded back to its length: never valid JSON
        raw = json.dumps(doc).encode()
        keep = draw(st.integers(1, len(raw) - 2))
        raw = raw[:keep].rstrip() + b" " * (len(raw) - len(raw[:keep].rstrip()))
        return struct.pack("<Q", len(raw)) + raw + body
    if kind == "not_utf8":
        raw = json.dumps(doc).encode()
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + draw(st.sampled_from([b"\xff", b"\xc0", b"\x80", b"\xfe"])) + raw[at + 1 :]
        return struct.pack("<Q", len(raw)) + raw + body
    if kind == "top_level":
        return with_header(draw(st.sampled_from([[], [1, 2], "x", 7, None, True])), body)
    if kind == "dtype":
        entry["dtype"] = draw(st.text(min_size=0, max_size=8).filter(lambda s: s not in ("F32", "I32", "U32")))
    elif kind == "shape":  # a shape with another number of elements
        n = 1
        for d in entry["shape"]:
            n *= d
        shape = draw(st.lists(st.integers(0, 64), min_size=0, max_size=3).filter(lambda s: _prod(s) != n))
        entry["shape"] = draw(st.sampled_from([shape, [1.5], ["2"], -1, "16"]))
    elif kind == "offsets":
        b, e = entry["data_offsets"]
        shift = draw(st.integers(-16, 16).filter(lambda s: s != 0))
        entry["data_offsets"] = draw(
            st.sampled_from([[b + shift, e + shift], [b, e + shift], [e, b], [b], "0-4", None])
        )
    elif kind == "missing_key":
        del entry[draw(st.sampled_from(["dtype", "shape", "data_offsets"]))]
    elif kind == "metadata":
        doc["__metadata__"] = draw(st.sampled_from([{"format": 1}, ["pt"], "pt", {"a": None}]))
    return with_header(doc, body)


def _prod(xs: list[int]) -> int:
    n = 1
    for x in xs:
        n *= x
    return n


@fuzz(14)
@given(
    cmd=ALL_CMDS,
    kind=st.sampled_from(["cut_json", "not_utf8", "top_level", "dtype", "shape", "offsets", "missing_key", "metadata"]),
    data=st.data(),
)
def test_header_json_mangled(tiny, cmd, kind, data):
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        folder = copy_model(tiny, tmp)
        f = folder / "model.safetensors"
        _, doc, body = header(f)
        f.write_bytes(_mangle(kind, data.draw, doc, body))
        drive(cmd, tmp, folder, f)


# --- config.json ------------------------------------------------------------------------------------------------
JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10)
NOT_OBJECTS = JSON_SCALARS | st.lists(JSON_SCALARS, max_size=4)


@fuzz(16)
@given(
    cmd=ALL_CMDS,
    kind=st.sampled_from(["bytes", "not_object", "model_type", "model_type_value", "no_model_type"]),
    data=st.data(),
)
def test_config_json_corrupted(tiny, cmd, kind, data):
    if cmd == "weights" and kind not in ("bytes", "not_object"):
        cmd = "dry-run"  # `weights` needs no architecture: only an unreadable config.json stops it
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        folder = copy_model(tiny, tmp)
        cfg = folder / "config.json"
        doc = json.loads(cfg.read_text())
        if kind == "bytes":  # never valid JSON: a byte JSON cannot start with
            cfg.write_bytes(data.draw(st.sampled_from([b"\xfe", b"\x00", b"}"])) + data.draw(st.binary(max_size=64)))
        elif kind == "not_object":
            cfg.write_text(json.dumps(data.draw(NOT_OBJECTS)))
        elif kind == "model_type":
            known = transformers_architectures()[0] or frozenset()
            doc["model_type"] = data.draw(st.text(min_size=1, max_size=16).filter(lambda s: s not in known))
            cfg.write_text(json.dumps(doc))
        elif kind == "model_type_value":
            doc["model_type"] = data.draw(st.sampled_from([None, 3, ["llama"], {"x": 1}, "", True]))
            cfg.write_text(json.dumps(doc))
        else:
            del doc["model_type"]
            cfg.write_text(json.dumps(doc))
        drive(cmd, tmp, folder, cfg)


# --- tokenizer and weights files -------------------------------------------------------------------------------
@fuzz(10)
@given(
    cmd=MATRIX_CMDS,
    kind=st.sampled_from(["removed", "cut", "not_object", "config_bytes", "vocab_without_merges"]),
    data=st.data(),
)
def test_tokenizer_files(tiny, cmd, kind, data):
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        folder = copy_model(tiny, tmp)
        tok = folder / "tokenizer.json"
        names: Path = tok
        if kind == "removed":
            tok.unlink()
            names = folder
        elif kind == "cut":
            raw = tok.read_bytes()
            tok.write_bytes(raw[: data.draw(st.integers(0, len(raw) - 2))])
        elif kind == "not_object":
            tok.write_text(json.dumps(data.draw(NOT_OBJECTS)))
        elif kind == "config_bytes":
            names = folder / "tokenizer_config.json"
            names.write_bytes(b"\xff" + data.draw(st.binary(max_size=32)))
        else:
            tok.unlink()
            (folder / "vocab.json").write_text("{}")
            names = folder
        msg = drive(cmd, tmp, folder, names)
        if kind in ("removed", "vocab_without_merges"):
            assert "tokenizer" in msg or "merges" in msg, msg


@fuzz(6)
@given(cmd=ALL_CMDS, kind=st.sampled_from(["removed", "a_folder", "renamed", "bin_garbage"]), data=st.data())
def test_weights_missing_or_unloadable(tiny, cmd, kind, data):
    if cmd == "weights" and kind not in ("removed", "bin_garbage"):
        cmd = "run"  # `weights` reads any *.safetensors name (renamed) and reports a folder as no files
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        folder = copy_model(tiny, tmp)
        f = folder / "model.safetensors"
        names: Path = folder
        if kind == "removed":
            f.unlink()
        elif kind == "a_folder":
            f.unlink()
            f.mkdir()
            names = f
        elif kind == "renamed":
            f.rename(folder / "weights.safetensors")
        else:  # a PyTorch checkpoint that is no zip archive nor a pickle, or a zip cut short
            f.unlink()
            names = folder / "pytorch_model.bin" if cmd != "weights" else folder
            garbage = data.draw(st.sampled_from([b"PK\x03\x04", b"\x00", b"x"])) + data.draw(st.binary(max_size=64))
            (folder / "pytorch_model.bin").write_bytes(garbage)
        drive(cmd, tmp, folder, names)


# --- sharded checkpoints: the index --------------------------------------------------------------------------------
SHARD = "model-00001-of-00001.safetensors"
ESCAPES = st.tuples(
    st.sampled_from(["../", "/", "sub/../../", "..\\", "C:\\", "./../"]),
    st.from_regex(r"[a-z0-9_-]{1,12}\.safetensors", fullmatch=True),
).map("".join)


@fuzz(14)
@given(
    cmd=ALL_CMDS,
    kind=st.sampled_from(["shape", "escape", "missing_shard", "wrong_shard", "bytes", "not_object"]),
    data=st.data(),
)
def test_index_corrupted(tiny, cmd, kind, data):
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        folder = copy_model(tiny, tmp)
        (folder / "model.safetensors").rename(folder / SHARD)
        _, doc, _ = header(folder / SHARD)
        weight_map = {k: SHARD for k in doc if k != "__metadata__"}
        index = folder / "model.safetensors.index.json"
        if kind == "shape":
            bad = data.draw(
                st.sampled_from(
                    [
                        {"weight_map": []},
                        {"weight_map": SHARD},
                        {"weight_map": {}},
                        {"weight_map": None},
                        {"metadata": {}},
                        {"weight_map": {"x": 5}},
                        {"weight_map": {"x": ""}},
                        {"weight_map": {"x": [SHARD]}},
                    ]
                )
            )
            index.write_text(json.dumps(bad))
        elif kind == "escape":
            victim = data.draw(st.sampled_from(sorted(weight_map)))
            weight_map[victim] = data.draw(ESCAPES)
            index.write_text(json.dumps({"weight_map": weight_map}))
        elif kind == "missing_shard":
            victim = data.draw(st.sampled_from(sorted(weight_map)))
            weight_map[victim] = data.draw(st.from_regex(r"[a-z]{1,8}-0000[2-9]\.safetensors", fullmatch=True))
            index.write_text(json.dumps({"weight_map": weight_map}))
        elif kind == "wrong_shard":  # a tensor the shard does not hold (transformers would initialise it randomly)
            weight_map[data.draw(st.from_regex(r"model\.layers\.[0-9]\.[a-z_]{1,10}\.weight", fullmatch=True))] = SHARD
            index.write_text(json.dumps({"weight_map": weight_map}))
        elif kind == "bytes":
            index.write_bytes(b"\xfe" + data.draw(st.binary(max_size=32)))
        else:
            index.write_text(json.dumps(data.draw(NOT_OBJECTS)))
        drive(cmd, tmp, folder, index)


# --- GGUF ---------------------------------------------------------------------------------------------------------
@fuzz(10)
@given(cmd=ALL_CMDS, where=st.sampled_from(["header", "data"]), data=st.data())
def test_truncated_gguf(gguf_bytes, cmd, where, data):
    header_end = 2 << 20  # the embedded GGUF's metadata and tensor descriptions end before 2 MiB
    cut = data.draw(st.integers(0, header_end) if where == "header" else st.integers(header_end, len(gguf_bytes) - 1))
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        f = tmp / "model.gguf"
        f.write_bytes(gguf_bytes[: min(cut, header_end)])
        os.truncate(f, cut)  # a cut in the data: the real header, the data left as a sparse run of zeros
        msg = drive(cmd, tmp, f, f, source="gguf")
        if cmd != "weights" and where == "data":
            assert "truncated: header says" in msg, msg


@fuzz(10)
@given(
    cmd=MATRIX_CMDS,
    version=st.sampled_from([b"\x03\x00\x00\x00", b"\x02\x00\x00\x00", b"\x00\x00\x00\x03", b"\x01\x00\x00\x00"])
    | st.binary(min_size=4, max_size=4),
    rest=st.binary(max_size=256),
)
def test_random_bytes_with_a_gguf_magic(cmd, version, rest):
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        f = tmp / "random.gguf"
        f.write_bytes(b"GGUF" + version + rest)
        drive(cmd, tmp, f, f, source="gguf")


# --- datasets -----------------------------------------------------------------------------------------------------
BAD_BYTES = st.sampled_from(
    [b"\xff", b"\xfe", b"\xc0\x80", b"\x80", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82"]
)
WHITESPACE = st.text(alphabet=" \t\n\r\x0b\x0c\u3000\u00a0\u2028\u2029\u1680", min_size=1, max_size=40)


@fuzz(14)
@given(
    cmd=MATRIX_CMDS,
    source=st.sampled_from(["text", "jsonl"]),
    kind=st.sampled_from(["not_utf8", "empty", "whitespace", "bom_only", "folder", "missing"]),
    data=st.data(),
)
def test_dataset_file_unreadable_or_empty(cmd, source, kind, data):
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        f = tmp / ("data.txt" if source == "text" else "data.jsonl")
        if kind == "not_utf8":
            good = data.draw(st.text(max_size=200)).encode()
            at = data.draw(st.integers(0, len(good)))
            while at and (good[at - 1] & 0xC0 == 0xC0 or at < len(good) and good[at] & 0xC0 == 0x80):
                at -= 1  # keep the valid text's characters whole: the bad byte is the first one
            f.write_bytes(good[:at] + data.draw(BAD_BYTES) + good[at:])
        elif kind == "empty":
            f.write_bytes(b"")
        elif kind == "whitespace":
            f.write_text(data.draw(WHITESPACE), encoding="utf-8")
        elif kind == "bom_only":
            f.write_bytes(b"\xef\xbb\xbf" + data.draw(WHITESPACE).encode())
        elif kind == "folder":
            f.mkdir()
        msg = drive_dataset(cmd, tmp, {"source": source, "path": str(f)}, f)
        if kind == "not_utf8":
            assert f"at offset {at})" in msg, msg


RECORD = st.fixed_dictionaries({"text": st.text(alphabet="abc xyz.", min_size=1, max_size=30).filter(str.strip)})
BAD_LINES = st.one_of(
    st.sampled_from(["{", '{"text": "a"', "text", "{'text': 'a'}", '{"text": "a"}}', "[1,", "nul", '"unterminated']),
    NOT_OBJECTS.map(json.dumps),
    st.dictionaries(st.sampled_from(["txt", "content", "Text"]), st.text(max_size=5), max_size=2).map(json.dumps),
    st.sampled_from([None, 1, 2.5, ["a"], {"a": "b"}, True]).map(lambda v: json.dumps({"text": v})),
)


@fuzz(12)
@given(cmd=MATRIX_CMDS, good=st.lists(RECORD, max_size=5), bad=BAD_LINES, data=st.data())
def test_jsonl_wrong_line_shapes(cmd, good, bad, data):
    at = data.draw(st.integers(0, len(good)))
    lines = [json.dumps(r) for r in good]
    lines.insert(at, bad)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        f = tmp / "data.jsonl"
        f.write_text("\n".join(lines) + "\n", encoding="utf-8")
        msg = drive_dataset(cmd, tmp, {"source": "jsonl", "path": str(f)}, f)
        assert f": line {at + 1}:" in msg, msg


@fuzz(4)
@given(cmd=MATRIX_CMDS, n=st.integers(1, 5), empty=st.sampled_from(["", " ", "\n\t"]))
def test_jsonl_without_text(cmd, n, empty):
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        f = tmp / "data.jsonl"
        f.write_text("\n".join(json.dumps({"text": empty}) for _ in range(n)), encoding="utf-8")
        msg = drive_dataset(cmd, tmp, {"source": "jsonl", "path": str(f)}, f)
        assert "no text" in msg, msg


# --- failures only a load shows: `run` (--json keeps the progress lines off stderr) -------------------------------
def _config(**changes: Any) -> Callable[[Path], Path]:
    def corrupt(folder: Path) -> Path:
        cfg = json.loads((folder / "config.json").read_text())
        cfg.update(changes)
        (folder / "config.json").write_text(json.dumps(cfg))
        return folder

    return corrupt


def _tokenizer_json(edit: Callable[[dict[str, Any]], Any]) -> Callable[[Path], Path]:
    def corrupt(folder: Path) -> Path:
        doc = json.loads((folder / "tokenizer.json").read_text())
        (folder / "tokenizer.json").write_text(json.dumps(edit(doc)))
        return folder

    return corrupt


DEEP = {
    "shapes_disagree_with_config": (_config(hidden_size=32, head_dim=16), "do not match config.json"),
    "tensors_missing_for_config": (_config(num_hidden_layers=3), "num_hidden_layers is 3, but the weights hold 2 layers"),
    "config_value_of_wrong_type": (_config(num_hidden_layers=2.5), "num_hidden_layers"),
    "unknown_activation": (_config(hidden_act="nope"), "cannot load the model"),
    "tokenizer_json_not_a_tokenizer": (_tokenizer_json(lambda d: {}), "cannot load the tokenizer"),
    "tokenizer_model_of_wrong_type": (_tokenizer_json(lambda d: {**d, "model": 5}), "cannot load the tokenizer"),
}


@pytest.mark.parametrize("case", sorted(DEEP))
def test_failures_only_loading_shows_are_input_errors(tiny, case):
    corrupt, expected = DEEP[case]
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        folder = corrupt(copy_model(tiny, tmp))
        args = ["run", "-m", str(write_matrix(tmp, {"source": "hf", "path": str(folder)})), "--json"]
        o = expect_failure(args, tmp, folder)
        assert "model.path" in o.stderr and expected in o.stderr, o.describe()


@pytest.mark.parametrize("cmd", ["dry-run", "run"])
@pytest.mark.parametrize("changes, expected", [
    ({"num_hidden_layers": 100_000}, "num_hidden_layers is 100,000, but the weights hold 2 layers (0..1)"),
    ({"vocab_size": 50_000_000}, "vocab_size is 50,000,000, but the embedding in the weights has"),
])
def test_config_claiming_more_than_the_weights_is_refused_before_loading(tiny, cmd, changes, expected):
    """transformers would build (and randomly fill) a model of the config's size first: 100,000 layers never finish
    loading, a 50M-token vocabulary allocates 12.8 GB."""
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        folder = _config(**changes)(copy_model(tiny, tmp))
        o = expect_failure([cmd, "-m", str(write_matrix(tmp, {"source": "hf", "path": str(folder)}))], tmp,
                           folder / "config.json")
        assert expected in o.stderr, o.describe()


def test_gguf_of_an_architecture_transformers_cannot_load(gguf_bytes):
    at = gguf_bytes.index(b"llama")  # general.architecture's value (the llama.* keys no longer match it)
    with tempfile.TemporaryDirectory() as t, tempfile.TemporaryDirectory() as cache:
        tmp = Path(t)
        f = tmp / "model.gguf"
        f.write_bytes(gguf_bytes[:at] + b"lxama" + gguf_bytes[at + 5 :])
        args = ["run", "-m", str(write_matrix(tmp, {"source": "gguf", "path": str(f)})), "--json"]
        o = expect_failure(args, tmp, f, env={"QUANTSWEEP_CACHE_DIR": cache})
        assert "model.path" in o.stderr and "lxama" in o.stderr, o.describe()
        assert not [p for p in Path(cache).rglob("*") if p.is_file()], "a failed conversion left files in the cache"


# --- what passes ------------------------------------------------------------------------------------------------
def test_the_intact_folder_passes_and_binary_looking_text_warns(tiny):
    info = check_hf_folder(tiny, "model.path")
    assert info.model_type == "llama" and info.weight_format == "safetensors" and info.tensors
    assert "tokenizer.json" in info.tokenizer
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        o = invoke(["dry-run", "-m", str(write_matrix(tmp, {"source": "hf", "path": str(tiny)})), "--json"], tmp)
        assert o.code == 0 and o.escaped is None, o.describe()
        assert not [w for w in json.loads(o.stdout)["warnings"] if "dataset.path" in w or "model.path" in w]
        noise = bytes(b % 128 for b in os.urandom(4096)).decode("ascii")  # random bytes that happen to decode
        (tmp / "noise.txt").write_text(noise, encoding="utf-8")
        matrix = write_matrix(
            tmp, {"source": "hf", "path": str(tiny)}, {"source": "text", "path": str(tmp / "noise.txt")}
        )
        o = invoke(["dry-run", "-m", str(matrix), "--json"], tmp)
        assert o.code == 0 and o.escaped is None, o.describe()
        warnings = [w for w in json.loads(o.stdout)["warnings"] if w.startswith(f"dataset.path: {tmp / 'noise.txt'}")]
        assert warnings and any("control characters" in w for w in warnings), o.describe()


@fuzz(12)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(256, 4096), printable=st.booleans())
def test_random_characters_warn(seed, n, printable):
    """Random, not merely arbitrary: hypothesis picks the seed and length, `random` the characters (a run of one
    repeated letter is not what this promise is about)."""
    rng = random.Random(seed)
    if printable:  # no control characters at all: the letters' share and mixed case give it away
        text = "".join(chr(rng.randrange(32, 127)) for _ in range(n))
    else:  # random bytes below 0x80: always valid UTF-8
        text = bytes(rng.randrange(128) for _ in range(n)).decode("ascii")
    assert text_warnings(text), repr(text[:80])


NATURAL = [
    "The quick brown fox jumps over the lazy dog, and then it rests in the shade of an old oak tree. " * 6,
    "def load(path):\n    with open(path, encoding='utf-8') as fh:\n        return json.load(fh)\n\n" * 8,
    "const element = document.getElementById('main');\nelement.addEventListener('click', onClick);\n" * 6,
    "自然语言处理是计算机科学领域与人工智能领域中的一个重要方向。它研究能实现人与计算机之间用自然语言进行有效通信的各种理论和方法。"
    * 4,
    "Обработка естественного языка — общее направление искусственного интеллекта и математической лингвистики. " * 4,
    "प्राकृतिक भाषा संसाधन कंप्यूटर विज्ञान और भाषाविज्ञान का एक क्षेत्र है। " * 6,
    "# Title\n\nSome *markdown* with a [link](https://example.com) and `code`.\n\n- item one\n- item two\n" * 5,
]


@pytest.mark.parametrize(
    "text", NATURAL, ids=["english", "python", "javascript", "chinese", "russian", "hindi", "markdown"]
)
def test_language_does_not_warn(text):
    assert text_warnings(text) == []
