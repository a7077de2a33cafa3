"""Forecasting ML core (the Forecast half), free of gRPC: forecasters, metrics, backtests.

`base` defines one series' forecaster interface and its probabilistic output; `models` holds the
statistical algorithms; `metrics` the accuracy measures (M4 definitions for sMAPE, MASE, OWA).
"""
