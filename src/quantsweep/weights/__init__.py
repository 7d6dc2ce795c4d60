"""`quantsweep weights`: data-free weight statistics and simulated weight-quantization error (docs/weights.md).

Modules, one idea each:

- `sources`: resolve `--model` to the safetensors shard files to read;
- `naming`: rules that name layers, experts and projections and split fused tensors;
- `stats`: per-matrix weight statistics (numpy, float64 accumulation);
- `quant_error`: ModelOpt fake quantization of one weight matrix and its error;
- `tables`: layer / block-of-4 / global summaries and format deltas;
- `writer`: CSV (always), Parquet (when pyarrow is importable), markdown summary;
- `command`: orchestration, progress, the table of most quantization-hostile layers.

Nothing here imports torch or ModelOpt at module import time except `quant_error` and `command`, which are
imported only by the `weights` command itself.
"""
