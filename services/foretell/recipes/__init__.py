"""Recommendation recipes: the ML core of the Personalize half, free of gRPC.

`base` defines the data every recipe trains on and the model interface serving uses;
`registry` maps recipe names to classes.
"""
