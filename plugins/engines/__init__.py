"""Inference engines other than Hugging Face ``generate`` (optional extras: ``padt[vllm]``)."""
