"""Research tools for the SynthAV chain, outside the installed package (docs/synthav.md#research-tools).

- ``probe``: what the frozen stage-0 parts know (linear probes, caption loss by token kind, questions).
- ``spread``: how much each representation of a trained model varies from clip to clip.
- ``clip_reading``: an extra LLM-only stage-0 phase over frozen pictures, not in the chain.
- ``by_type``: one question family split by question type, with the choices the replies name.
- ``recipes``: the audio recipes compared over training seeds (tables, claims, one plot).

Each runs as ``python -m scripts.synthav.NAME --help`` from the repository root.
"""
