"""Simulators of the provinces' own back-end systems (real HTTP servers on loopback).

Each one speaks its province's native format, written by hand rather than
through the mapping engine, so that the gateway's adapters are tested against
an independent implementation of every format. A region with no hand-written
simulator (one known only by its config) is served through its own mapping by
the *mapped* dialect (:mod:`yrd_simulators.mapped`).
"""
