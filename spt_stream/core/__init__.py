"""The pure core: frames, the energy grid, batching, offsets, queues, back-off (no I/O)."""
