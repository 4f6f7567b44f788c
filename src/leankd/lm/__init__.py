"""Causal language models at inference: sampling and greedy generation, and CPU latency per generated token."""
