"""The harness that reproduces the paper's experiments on top of the :mod:`locoprop` library.

From the bottom up: :mod:`~.provenance` (where a result comes from, atomic writes), :mod:`~.data`
(verified datasets), :mod:`~.config` (run configurations and profiles), :mod:`~.records` (a run's
result file), :mod:`~.checkpoints`, :mod:`~.tuning` (the searches, read from the result files),
:mod:`~.bf16_check`, :mod:`~.train` (the training loop), :mod:`~.executors` (where runs train: here
or on SLURM), :mod:`~.sweep` (many runs, tuning driven to its end), :mod:`~.protocol` (the paper's
whole protocol, part by part), :mod:`~.results` (result files as tables), :mod:`~.report`,
:mod:`~.claims`, :mod:`~.plotting`, :mod:`~.counting` (operations and host reads per step),
:mod:`~.bench`, :mod:`~.reproduce` (notebooks re-executed) and :mod:`~.cli` (``python -m locoprop``).
"""
