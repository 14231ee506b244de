"""Tests of inference columns (transformer/inference)."""
