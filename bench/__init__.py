"""figrelay's benchmarks. ``python -m bench`` runs the suite of issue 11 (docs/performance.md);
the other modules of this folder that have a ``main`` are single benchmarks run as scripts."""
