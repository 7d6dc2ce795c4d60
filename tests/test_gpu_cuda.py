"""GPU-only: the same pipeline on CUDA (run on the GPU machine with QUANTSWEEP_REQUIRE_GPU=1)."""

from __future__ import annotations

import copy
import os

import pytest
from pipeline_helpers import TINY_MATRIX, write_matrix

from quantsweep.errors import ExitCode
from quantsweep.execution.sweep import RunOptions, run_sweep

os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.mark.gpu
def test_tiny_sweep_on_cuda_records_device_telemetry_and_gpu_name(tmp_path):
    import torch

    data = copy.deepcopy(TINY_MATRIX)
    data["name"] = "cuda"
    data["model"]["device"] = "cuda"
    # NVFP4 (fp4 weights) only fake-quantizes on CUDA in ModelOpt: exercise it here.
    data["axes"] = {"quant_pairs": ["wint8_afp16", "wfp4_afp16"], "granularities": ["default"], "dataset_sizes": ["a"]}
    path = write_matrix(tmp_path, data)
    outcome = run_sweep(path, RunOptions(output_root=str(tmp_path / "runs")))
    assert outcome.exit_code == ExitCode.OK, [r.get("error") for r in outcome.summary["rows"]]
    s = outcome.summary
    assert s["hardware"]["gpus"][0]["name"] == torch.cuda.get_device_name(0)
    for row in s["rows"]:
        assert row["status"] == "ok" and row["valid"], row["reasons"]
        assert row["device"] == "cuda" and row["fake_quant_backend"] == "modelopt"
        assert row["telemetry"]["peak_device_mb"] > 0
    assert s["model"]["dtype"] == "bfloat16"


def _need_gpus(n: int) -> None:
    """Skip with a reason on a machine with fewer GPUs, unless QUANTSWEEP_REQUIRE_GPUS asks for them (then fail)."""
    import torch

    have = torch.cuda.device_count()
    if have >= n:
        return
    if int(os.environ.get("QUANTSWEEP_REQUIRE_GPUS", "0") or 0) >= n:
        pytest.fail(f"QUANTSWEEP_REQUIRE_GPUS asks for {n} GPUs; this machine has {have}", pytrace=False)
    pytest.skip(f"needs {n} GPUs (set QUANTSWEEP_REQUIRE_GPUS={n} to fail instead of skipping)")


def _rows_by_id(outcome) -> dict:
    return {r["cell_id"]: r for r in outcome.summary["rows"]}


def _cuda_matrix(tmp_path, name: str, pairs: list[str], sizes: list[str]):
    """The tiny test matrix on CUDA, without canary, over `pairs` x the default granularity x `sizes`."""
    data = copy.deepcopy(TINY_MATRIX)
    data["name"] = name
    data["model"]["device"] = "cuda"
    data["canary"] = {"enabled": False}
    data["axes"] = {"quant_pairs": pairs, "granularities": ["default"], "dataset_sizes": sizes}
    return write_matrix(tmp_path, data)


def _switched_runs(path, tmp_path, monkeypatch, switch_env: str, count=None, counted=None) -> dict:
    """The sweep at `path` with the diagnostic switch `switch_env` off ("0") and on ("1"), both successful; with
    `count`, `counted[switch]` is how much `count()` grew during that run."""
    runs = {}
    for switch in ("0", "1"):
        monkeypatch.setenv(switch_env, switch)
        before = count() if count else 0
        runs[switch] = run_sweep(path, RunOptions(output_root=str(tmp_path / f"{switch_env.lower()}{switch}")))
        if count:
            counted[switch] = count() - before
        assert runs[switch].exit_code == ExitCode.OK, [r.get("error") for r in runs[switch].summary["rows"]]
    return runs


def _manifest(row) -> dict:
    import json
    from pathlib import Path

    return json.loads((Path(row["path"]) / "manifest.json").read_text())


def _assert_same_rows(a, b) -> None:
    ra, rb = _rows_by_id(a), _rows_by_id(b)
    assert set(ra) == set(rb) and ra
    for cid, x in ra.items():
        y = rb[cid]
        assert x["status"] == y["status"] == "ok", (x.get("error"), y.get("error"))
        assert x["achieved_bits"] == y["achieved_bits"]
        assert x["total_score"] == pytest.approx(y["total_score"], rel=1e-3)
        assert x["quality"]["kl_mean"] == pytest.approx(y["quality"]["kl_mean"], rel=1e-3, abs=1e-6)


@pytest.mark.gpu
def test_model_spread_over_two_gpus_gives_the_rows_of_one_gpu(tmp_path):
    _need_gpus(2)
    data = copy.deepcopy(TINY_MATRIX)
    data["model"].update(device="cuda", preset="qwen3-0.6b")  # 1.2 GB in bf16: big enough to split
    data["canary"] = {"enabled": False}
    one = run_sweep(write_matrix(tmp_path, data, "one.yaml"), RunOptions(output_root=str(tmp_path / "one")))
    # a cap of 600 MiB on GPU 0 leaves it the embedding and a few layers: the rest goes to GPU 1
    data["model"].update(device_map="sequential", max_memory={"0": "600MiB", "1": "8GiB"})
    two = run_sweep(write_matrix(tmp_path, data, "two.yaml"), RunOptions(output_root=str(tmp_path / "two")))
    assert two.exit_code == ExitCode.OK, [r.get("error") for r in two.summary["rows"]]
    placement = two.summary["model"]["placement"]
    assert placement["devices"] == ["cuda:0", "cuda:1"], placement
    _assert_same_rows(one, two)
    for row in two.summary["rows"]:
        by_device = row["telemetry"]["peak_device_mb_by_device"]
        assert set(by_device) == {"cuda:0", "cuda:1"} and all(v > 0 for v in by_device.values())


@pytest.mark.gpu
def test_ray_worker_with_two_gpus_spreads_its_model_over_them(tmp_path):
    _need_gpus(2)
    data = copy.deepcopy(TINY_MATRIX)
    data["model"].update(device="cuda", preset="qwen3-0.6b")  # balanced over two GPUs: half the layers each
    data["canary"] = {"enabled": False}
    data["axes"]["dataset_sizes"] = ["a"]
    path = write_matrix(tmp_path, data)
    local = run_sweep(path, RunOptions(output_root=str(tmp_path / "local")))
    ray = run_sweep(path, RunOptions(output_root=str(tmp_path / "ray"), executor="ray", workers=1, gpus_per_worker=2))
    assert ray.exit_code == ExitCode.OK, [r.get("error") for r in ray.summary["rows"]]
    placement = ray.summary["model"]["placement"]
    assert placement["device_map"] == "auto" and sorted(placement["devices"]) == ["cuda:0", "cuda:1"], placement
    _assert_same_rows(local, ray)


@pytest.mark.gpu
def test_score_replays_as_cuda_graphs_give_the_eager_replays_bits(tmp_path, monkeypatch):
    """engine/replay_graphs.py: the same sweep with the score replays captured as CUDA graphs and without them
    records the same raw scores, recipes and quality, bit for bit — including FP8 W8A8 calibrated once for two
    sizes, whose graphs read each size's amax snapshot."""
    path = _cuda_matrix(tmp_path, "graphs", ["wint4_afp16", "wint8_afp16", "wfp8_afp8"], ["a", "b"])
    runs = _switched_runs(path, tmp_path, monkeypatch, "QUANTSWEEP_SCORE_GRAPHS")
    eager, graphs = _rows_by_id(runs["0"]), _rows_by_id(runs["1"])
    assert set(eager) == set(graphs) and len(eager) == 6
    for cid, e in eager.items():
        g = graphs[cid]
        me, mg = _manifest(e), _manifest(g)
        assert [x["raw_scores"] for x in mg["layers"]] == [x["raw_scores"] for x in me["layers"]], e["key"]
        assert [x["chosen"] for x in mg["layers"]] == [x["chosen"] for x in me["layers"]], e["key"]
        assert g["quality"]["kl_mean"] == e["quality"]["kl_mean"] and g["achieved_bits"] == e["achieved_bits"]
        tel_e, tel_g = e["telemetry"]["shared"], g["telemetry"]["shared"]
        assert tel_e["graph_modules"] == tel_e["graph_replays"] == 0, tel_e  # switched off: every replay eager
        # every scored linear (lm_head included at this size) got a graph and replayed it for every score batch
        assert tel_g["graph_modules"] == tel_g["replayed_modules"] > 0, tel_g
        assert "graph_capture_failures" not in tel_g, tel_g
        batches = tel_g["graph_replays"] // tel_g["graph_modules"]
        assert tel_g["graph_replays"] == batches * tel_g["graph_modules"] and batches in (1, 2), tel_g
    # a replay larger than MAX_GRAPH_MACS stays eager (GPU-bound shapes: a graph gains nothing there and its static
    # inputs cost memory): with the limit at 0 no module is graphed, and the scores are the same
    from quantsweep.engine import replay_graphs

    monkeypatch.setattr(replay_graphs, "MAX_GRAPH_MACS", 0)
    capped = run_sweep(path, RunOptions(output_root=str(tmp_path / "capped")))
    for cid, c in _rows_by_id(capped).items():
        assert c["telemetry"]["shared"]["graph_modules"] == 0, c["telemetry"]["shared"]
        assert c["total_score"] == eager[cid]["total_score"] and c["quality"]["kl_mean"] == eager[cid]["quality"]["kl_mean"]


@pytest.mark.gpu
def test_fused_score_kernel_equals_the_eager_score_on_cuda(tmp_path, monkeypatch):
    """engine/score_kernel.py on the GPU: ModelOpt's six-pass score and the one-pass kernel agree to the order of
    the float32 sum (bfloat16 rounding included, which Triton's CPU interpreter cannot check), the kernel gives the
    same bits twice, and a sweep with the kernel switched off records the same recipes and quality, and raw scores
    equal to 1e-6."""
    import torch

    from quantsweep.engine.captured_scores import _score
    from quantsweep.engine.score_kernel import _FAILED, fusable, fused_enabled, fused_score, warm

    assert fused_enabled(), "no Triton on this GPU machine: the fused score is off"
    torch.manual_seed(0)
    for dt in (torch.bfloat16, torch.float16, torch.float32):
        warm(torch.device("cuda"), dt)  # what the sweep's set-up does: fusable() only where it was compiled
        assert not _FAILED, _FAILED
        q = torch.randn(2048, 3073, device="cuda").to(dt)
        y = (q.float() + 1e-2 * torch.randn_like(q, dtype=torch.float32)).to(dt)
        g = torch.randn(2048, 3073, device="cuda") * 1e-3
        assert fusable(q, y, g)
        d = q.clone()
        d -= y
        fused, eager = fused_score(q, y, g), _score(g, d)
        assert torch.equal(fused, fused_score(q, y, g)), dt  # deterministic: fixed-order sum of the partials
        assert abs(float(fused) - float(eager)) <= 1e-6 * float(eager), (dt, float(fused), float(eager))
    q, y, one = (torch.tensor([v], device="cuda").bfloat16() for v in (256.0, 1.0078125, 1.0))
    assert float(fused_score(q, y, one.float())) == 255.0**2  # 254.99 rounded to bfloat16 first, as `D -= Y` does

    path = _cuda_matrix(tmp_path, "fused", ["wint4_afp16", "wfp8_afp8"], ["a"])
    from quantsweep.engine import score_kernel

    kernel_calls: dict[str, int] = {}
    runs = _switched_runs(path, tmp_path, monkeypatch, "QUANTSWEEP_FUSED_SCORE",
                          count=lambda: score_kernel.calls, counted=kernel_calls)
    assert kernel_calls["0"] == 0 and kernel_calls["1"] > 0, kernel_calls  # switched off, and really used
    eager_rows, fused_rows = _rows_by_id(runs["0"]), _rows_by_id(runs["1"])
    assert set(eager_rows) == set(fused_rows) and len(eager_rows) == 2
    for cid, e in eager_rows.items():
        f = fused_rows[cid]
        me, mf = _manifest(e), _manifest(f)
        assert [x["chosen"] for x in mf["layers"]] == [x["chosen"] for x in me["layers"]], e["key"]
        for le, lf in zip(me["layers"], mf["layers"], strict=True):
            for a, b in zip(le["raw_scores"], lf["raw_scores"], strict=True):
                assert abs(a - b) <= 1e-6 * max(abs(a), 1e-30), (e["key"], le["name"], a, b)
        assert f["quality"]["kl_mean"] == e["quality"]["kl_mean"] and f["achieved_bits"] == e["achieved_bits"]


@pytest.mark.gpu
def test_quality_on_cuda_equals_the_cpu_computation_and_pins_the_small_baseline_tensors():
    """engine/quality.py on a GPU: the per-token results stay on the device until the last batch and the baseline
    tensors are copied from page-locked memory; the metrics are those of the same logits on the CPU."""
    import torch

    from quantsweep.engine.quality import baseline_outputs, compare_to_baseline

    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = logits

        def forward(self, input_ids, use_cache=True):
            return type("Out", (), {"logits": self.logits[: input_ids.shape[0]].to(input_ids.device)})()

    torch.manual_seed(0)
    base_logits, quant_logits = torch.randn(2, 9, 700), torch.randn(2, 9, 700)
    batches = [{"input_ids": torch.randint(0, 700, (2, 9))} for _ in range(2)]
    for max_bytes in (1 << 30, 0):  # full log-probs, then the top-k path
        cpu = compare_to_baseline(Fixed(quant_logits), batches, baseline_outputs(Fixed(base_logits), batches, max_bytes))
        base = baseline_outputs(Fixed(base_logits), batches, max_bytes)
        cuda_batches = [{"input_ids": b["input_ids"].cuda()} for b in batches]
        on_gpu = compare_to_baseline(Fixed(quant_logits), cuda_batches, base)
        assert on_gpu["kl_method"] == cpu["kl_method"]
        for key in ("kl_mean", "kl_max", "ppl_quant", "ln_ppl_ratio", "top1_agreement", "eval_tokens"):
            assert on_gpu[key] == pytest.approx(cpu[key], rel=1e-5, abs=1e-7), key
        assert all(t.is_pinned() for t in base.argmax)


@pytest.mark.gpu
def test_a_replay_that_cannot_be_captured_runs_eagerly_and_leaves_the_allocator_usable(tmp_path, monkeypatch):
    """A host sync inside a capture invalidates it and PyTorch's capture_end raises before it ends the allocator's
    routing to the graph pool; engine/replay_graphs.py ends it (`_abandon_capture`), captures nothing more in the
    call and replays eagerly: the scores are the eager run's, and `torch.cuda.empty_cache()` (which asserts while
    a capture is under way) still works."""
    import torch

    from quantsweep.engine import captured_scores

    real_body = captured_scores._graph_body

    def syncing_body(module, x, y, g):
        torch.cuda.synchronize()  # not allowed while this thread's stream is capturing
        real_body(module, x, y, g)

    path = _cuda_matrix(tmp_path, "capture-fails", ["wint8_afp16", "wfp8_afp8"], ["b"])
    monkeypatch.setenv("QUANTSWEEP_SCORE_GRAPHS", "0")
    eager = _rows_by_id(run_sweep(path, RunOptions(output_root=str(tmp_path / "eager"))))
    monkeypatch.setenv("QUANTSWEEP_SCORE_GRAPHS", "1")
    monkeypatch.setattr(captured_scores, "_graph_body", syncing_body)
    failed = _rows_by_id(run_sweep(path, RunOptions(output_root=str(tmp_path / "failed"))))
    assert set(failed) == set(eager) and len(failed) == 2
    for cid, row in failed.items():
        tel = row["telemetry"]["shared"]
        assert row["status"] == "ok", row.get("error")
        assert tel["graph_modules"] == 0 and tel["graph_capture_failures"] == 1, tel  # one try per call, then eager
        assert "synchron" in tel["graph_capture_error"].lower() or "captur" in tel["graph_capture_error"].lower(), tel
        assert row["total_score"] == eager[cid]["total_score"] and row["quality"]["kl_mean"] == eager[cid]["quality"]["kl_mean"]
    torch.cuda.empty_cache()  # raises (an internal assert) if the allocator still thinks a capture is under way
    x = torch.ones(1024, 1024, device="cuda")
    assert float((x @ x)[0, 0]) == 1024.0


@pytest.mark.gpu
def test_fp8_quantizers_called_through_the_kernel_directly_give_modelopts_bits(monkeypatch):
    """engine/quant_linear.py `quantize`: FP8 fake quantization handed to ModelOpt's kernel directly gives what the
    quantizer's own call gives, bit for bit (per-tensor and per-channel amax, values beyond the calibrated range),
    and a W8A8 model's lean forward equals ModelOpt's forward."""
    import warnings

    import torch

    import modelopt.torch.quantization as mtq
    from quantsweep.engine import quant_linear

    calls = []
    real = quant_linear._fp8_kernel
    monkeypatch.setattr(quant_linear, "_fp8_kernel", lambda *a: calls.append(a[2].numel()) or real(*a))
    per_channel = {"quant_cfg": [{"quantizer_name": "*", "enable": False},
                                 {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": (4, 3), "axis": 0}},
                                 {"quantizer_name": "*input_quantizer", "cfg": {"num_bits": (4, 3), "axis": None}}],
                   "algorithm": "max"}
    for cfg in (mtq.FP8_DEFAULT_CFG, per_channel):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(256, 384), torch.nn.ReLU(), torch.nn.Linear(384, 128))
        model = model.to("cuda", torch.bfloat16)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # inputs drawn on the host: the CUDA generator is not this test's to use (an earlier test's aborted
            # graph capture may have left it refusing offsets)
            mtq.quantize(model, cfg, lambda m: m(torch.randn(16, 256).to("cuda", torch.bfloat16)))
        x = (4 * torch.randn(8, 33, 256)).to("cuda", torch.bfloat16)  # beyond the calibrated amax too
        with torch.no_grad():
            for q, t in ((model[0].input_quantizer, x), (model[0].weight_quantizer, model[0].weight)):
                before = len(calls)
                assert torch.equal(quant_linear.quantize(q, t), q(t))
                assert len(calls) == before + 1
            want = model(x)
            with quant_linear.lean_linear_forwards(model):
                got = model(x)
        assert torch.equal(got, want)
    assert {1, 384} <= set(calls)  # per-tensor and per-channel amax both went to the kernel directly


@pytest.mark.gpu
def test_axis_fake_quant_kernel_gives_modelopts_bits(monkeypatch):
    """engine/axis_fake_quant.py: the Triton kernel returns what ModelOpt's `fake_tensor_quant_with_axis` CUDA
    kernel returns, bit for bit (NaN positions compared as NaN): per row, per column, a middle axis with several
    column tiles, blocks of 128 and 64, INT4 and INT8, narrow and full range, bf16 / fp16 / fp32, with exact ties
    (x * scale = k + 1/2, exactly representable in every dtype), values far beyond amax (clamped), NaN and inf
    inputs, a zero, a sub-2^-24 and an infinite amax, with and without the zero shortcut; inside a CUDA graph
    capture a compiled variant is recorded and replays ModelOpt's bits, one not compiled yet is left to ModelOpt
    (nothing compiled in the capture); what `eligible` refuses; and ModelOpt's own quantizers (INT8 per channel,
    INT4 blocks), called inside `fast_axis_fake_quant()`, reach it and give what they give outside."""
    import warnings

    import torch

    import modelopt.torch.quantization as mtq
    from modelopt.torch.quantization import tensor_quant
    from modelopt.torch.quantization.extensions import get_cuda_ext
    from quantsweep.engine import axis_fake_quant as afq

    ext = get_cuda_ext(raise_if_failed=True)
    assert afq.sources_hash() == afq.KNOWN_SOURCES  # the ModelOpt this was written against is the one here
    small = torch.zeros(64, 128, device="cuda", dtype=torch.bfloat16)
    assert afq.eligible(small, torch.ones(64, 1, device="cuda"), 4, False) is None  # below MIN_ELEMENTS: ModelOpt's
    monkeypatch.setattr(afq, "MIN_ELEMENTS", 0)  # these test tensors are small

    def same(a, b):
        nan = torch.isnan(a)
        ints = {torch.float32: torch.int32}.get(a.dtype, torch.int16)
        return torch.equal(nan, torch.isnan(b)) and torch.equal(a.view(ints)[~nan], b.view(ints)[~nan])

    g = torch.Generator().manual_seed(0)
    cases = 0
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for shape, axis in (((512, 640), 0), ((96, 4096), 0), ((640, 512), 1), ((6, 50, 33), 1), ((3, 5, 1500), 1),
                            ((3001, 128), 0), ((4099, 64), 0)):
            for num_bits, narrow in ((4, True), (8, True), (8, False)):
                x = torch.randn(shape, generator=g) * 2
                amax = torch.rand(shape[axis], generator=g) * 3 + 0.05
                bound = float(2 ** (num_bits - 1) - 1)
                amax[0], amax[1], amax[2], amax[4] = 0.0, 1e-9, 0.5, float("inf")  # zero, tiny, clamping, inf
                amax[3] = bound / 16  # scale 16: x = (k + 1/2) / 16 is exact in bf16 for |k| <= bound, a tie
                row = [slice(None)] * len(shape)
                row[axis] = 3
                steps = torch.randint(-int(bound), int(bound), x[tuple(row)].shape, generator=g)
                x[tuple(row)] = (steps + 0.5) / 16
                flat, middle = x.view(-1), x.numel() // 2  # (never in row 3)
                flat[middle + 1], flat[middle + 5], flat[middle + 6] = float("nan"), float("inf"), -float("inf")
                x, amax = x.to("cuda", dtype), amax.to("cuda")
                assert torch.equal(x[tuple(row)].float().cpu(), (steps + 0.5) / 16)  # the ties survived the cast
                want = ext.fake_tensor_quant_with_axis(x, amax, axis, num_bits, False, narrow)
                assert afq.eligible(x, amax.view([-1 if d == axis else 1 for d in range(len(shape))]), num_bits,
                                    False) == axis
                for shortcut in (True, False):
                    got = afq.fake_quant_axis(x, amax, axis, num_bits, narrow, zero_shortcut=shortcut)
                    assert same(got, want), (dtype, shape, axis, num_bits, narrow, shortcut)
                cases += 1
    assert cases == 63

    # what eligible refuses goes to ModelOpt's kernel
    x = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16)
    amax = x.abs().amax(dim=1, keepdim=True).float()
    assert afq.eligible(x, amax, 8, False) == 0
    assert afq.eligible(x.t(), x.abs().amax(dim=0, keepdim=True).float().t(), 8, False) is None  # not contiguous
    assert afq.eligible(x, amax, 8, True) is None  # unsigned (ModelOpt's kernel asserts on negatives)
    assert afq.eligible(x, amax, (4, 3), False) is None and afq.eligible(x, amax, True, False) is None
    shifted = torch.empty(256 * 512 + 8, device="cuda", dtype=torch.bfloat16)[1:256 * 512 + 1].view(256, 512)
    assert afq.eligible(shifted, amax, 8, False) is None  # not 16-byte aligned
    assert afq.eligible(x.double(), amax, 8, False) is None
    assert afq.eligible(x, amax[:128], 8, False) is None  # not one amax per row

    # CUDA graphs: a compiled variant is recorded and replays ModelOpt's bits; one not compiled is left to ModelOpt
    with afq.fast_axis_fake_quant() as on:
        assert on
        warm_x = torch.randn(64, 1024, device="cuda", dtype=torch.bfloat16)  # rows of 1024: a warmed variant
        cold_x = torch.randn(64, 40, device="cuda", dtype=torch.bfloat16)  # rows of 40 (not 16-divisible): not
        warm_a = warm_x.abs().amax(dim=1, keepdim=True).float()
        cold_a = cold_x.abs().amax(dim=1, keepdim=True).float()
        assert afq.warm(warm_x.device, torch.bfloat16)
        variants = set(afq._WARMED)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        graph = torch.cuda.CUDAGraph()
        before = afq.calls
        with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
            warm_out = tensor_quant.fake_quant_impl(warm_x, warm_a, 4, False, True)
            cold_out = tensor_quant.fake_quant_impl(cold_x, cold_a, 4, False, True)
        assert afq.calls == before + 1 and set(afq._WARMED) == variants  # the warm one recorded, nothing compiled
        warm_x.copy_(torch.randn(64, 1024, generator=g).to("cuda", torch.bfloat16))
        graph.replay()
        torch.cuda.synchronize()
        assert same(warm_out, ext.fake_tensor_quant_with_axis(warm_x, warm_a.squeeze(), 0, 4, False, True))
        assert same(cold_out, ext.fake_tensor_quant_with_axis(cold_x, cold_a.squeeze(), 0, 4, False, True))
        del graph

    per_channel = {"quant_cfg": [{"quantizer_name": "*", "enable": False},
                                 {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": 8, "axis": 0}}],
                   "algorithm": "max"}
    for cfg in (per_channel, mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(1024, 768)).to("cuda", torch.bfloat16)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mtq.quantize(model, cfg, lambda m: m(torch.randn(4, 1024).to("cuda", torch.bfloat16)))
        q, w = model[0].weight_quantizer, model[0].weight
        with torch.no_grad():
            want = q(w)
            before = afq.calls  # warm-ups are not counted
            with afq.fast_axis_fake_quant() as on:
                got = q(w)
        assert on and afq.calls == before + 1, cfg
        assert torch.equal(got.view(torch.int16), want.view(torch.int16)), cfg
        assert not torch.equal(got, w)  # it did quantize
