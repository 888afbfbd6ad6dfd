"""The GPU benchmark: the VRAM guard, NVML readings and load times on a real accelerator (``run.py``)."""
