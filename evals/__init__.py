"""IOI supervised-dictionary evaluation harness (Makelov, Lange, Nanda 2024, arXiv 2405.08366).

Modules, one concept each:

- :mod:`evals.data`: train / eval / counterfactual IOI splits with disjoint name pools, the
  attributes (IO, S, Pos) and the semantic positions (IO, S1, S2, END) of each prompt.
- :mod:`evals.locations`: a :class:`~evals.locations.Location` (hook name, head, position), named
  cross-sections, reading activations at locations and running the model with patched locations.
- :mod:`evals.locate`: location discovery (DLA, attention, ablation and activation patching).
- :mod:`evals.dictionary`: the ``Dictionary`` protocol, the supervised mean / MSE dictionaries and
  the SAE loader.
- :mod:`evals.approximation`, :mod:`evals.control`, :mod:`evals.interpretability`: the paper's three
  axes, one small function per metric (interpretability also holds the occlusion and over-splitting
  diagnostics).
- :mod:`evals.interpretation`: the interpretation space (attributes, Pos intersections, unions of
  names, ...) every feature is scored on.
- :mod:`evals.frozen_decoder`: the supervised directions as a frozen decoder (the frozen-decoder comparison).
- :mod:`evals.bootstrap`: seeded prompt resampling for the ± of every number.
- :mod:`evals.harness`: ``workbench ioi eval`` end to end; :mod:`evals.report`: the files it writes.

Importing this package is light (no TransformerLens, no ``sae``).
"""
