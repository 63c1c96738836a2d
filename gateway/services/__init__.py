"""Public gRPC services and the federation handlers behind them, one module per domain."""
