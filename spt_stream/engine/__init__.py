"""The engine: documents in, descriptor traces out.

* :mod:`~spt_stream.engine.core`: :class:`Engine`, the document handler every transport feeds,
  routing documents and frames between the parts below;
* :mod:`~spt_stream.engine.model_stage`: normalization, the model, the classical stage, rows;
* :mod:`~spt_stream.engine.model_thread`: the model thread (``batch.overlap``);
* :mod:`~spt_stream.engine.checkpointer`: flush every sink, then commit offsets;
* :mod:`~spt_stream.engine.ledger`: the runs the engine is writing.
"""

from spt_stream.engine.checkpointer import CommitFn
from spt_stream.engine.core import Engine
from spt_stream.engine.ledger import RunLedger, RunProgress
from spt_stream.engine.model_stage import Predictor

__all__ = ["CommitFn", "Engine", "Predictor", "RunLedger", "RunProgress"]
