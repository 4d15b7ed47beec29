"""data layer of wsrl_dist: transition schema, replay ring storage, offline datasets, MC returns.

Modules: schema (columns, validation), ring (RingBuffer), d4rl / minari (offline loaders), returns (Cal-QL).
"""
