"""quantsweep: sweep LLM quantization choices with NVIDIA ModelOpt AutoQuantize."""

__version__ = "0.1.0"
