"""The SPT model: the network (``network``), its checkpoints, the predictor and its backends
(eager, AOT), the descriptor schema, and file prediction."""
