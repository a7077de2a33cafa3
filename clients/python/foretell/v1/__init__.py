"""Generated from protos/foretell/v1 by clients/python/generate.py."""
