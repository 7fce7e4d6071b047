"""DART (DART-Math, arXiv 2407.13690): difficulty-aware rejection sampling.

`generators` produce responses (transformers, vllm, openai, replay, simulated), `verifiers` judge
them (math answers, code in the sandbox), `strategies` decide how many to sample per query (VRT,
Uniform, Prop2Diff) and record every trial. Pure logic: the lake I/O is in curation/stages/dart.py.
"""
