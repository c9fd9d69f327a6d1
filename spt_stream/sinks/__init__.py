"""Trace sinks: where per-frame results go (Zarr store, Tiled tables, feedback topic).

Only the pure row container is re-exported here; import a sink's module
(``spt_stream.sinks.zarr_trace``) to get the sink itself, so importing this package never pulls
Zarr, Tiled or Kafka.
"""

from spt_stream.sinks.rows import Column2D, TraceRows

__all__ = ["Column2D", "TraceRows"]
