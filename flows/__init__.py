"""Flows: commands that chain the stages (spectrograms -> retrain -> export), above them.

A flow may import ``spectrograms``, ``retrain``, ``label`` and ``soundretrain``; no stage
imports a flow (``tests/test_package_layers.py`` checks it).

* :mod:`flows.train`: ``train --audio_dir my_sounds --output_dir my_model``: class folders of
  audio in, a model folder out (audio-in TFLite, labels, sidecar, report), in one command.
"""
