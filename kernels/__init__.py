"""Triton kernels (import name solar_kernels); they register backend "triton" when imported."""
