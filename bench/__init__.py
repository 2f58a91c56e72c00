"""streamscribe's benchmark: the streamed pipeline against whole-file Whisper, side by side.

``python -m bench`` (``make bench``) builds a long-form input from the real-speech fixtures,
runs each system in its own child process on it, and writes ``bench/results.json`` and
``bench/RESULTS.md``. Modules, one step each:

- :mod:`bench.inputs` — the deterministic long-form input and its reference text;
- :mod:`bench.systems` — the systems and their command lines;
- :mod:`bench.whole_file` — the whole-file peers' child program;
- :mod:`bench.measure` — spawn, time, sample memory over the process tree;
- :mod:`bench.report` — WER, goal ratios, the Markdown table;
- :mod:`bench.cli` — the command line.
"""
