"""Distributed Great Expectations validation (see ``tasks.validation.validate`` for the steps).

- ``suites``: suites generated from the dataset spec + hand-written overrides, stored as JSON.
- ``expectations``: the custom GX expectation types leptonflow reports (drift, split checks).
- ``partials``: per-chunk evaluation on Dask workers and the exact merge of partial results.
- ``engine``: plans chunks, runs them on a Dask client, builds one GX suite validation result.
- ``drift``: PSI / KS / share / null-rate comparison of two merged profiles.
- ``datadocs``: a static HTML page per run, committed in the lake.
"""
