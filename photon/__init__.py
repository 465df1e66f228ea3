"""Photon: federated pre-training of language models across institutions.

Shared by both daemons: configuration, model zoo, tokenizer, data shards, PKI, logging and
the `photon` command line. The daemons live in `aggregator/` and `silo_agent/`; everything
about moving bytes lives in `bandwidth/`.
"""

__version__ = "0.1.0"
