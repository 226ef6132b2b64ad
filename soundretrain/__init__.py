"""What every stage shares, so no stage imports another sideways.

audio -> spectrogram -> bottleneck -> head -> exported model -> label

* :mod:`soundretrain.audio`: decode any audio file to ``y`` at ``sr``; windows.
* :mod:`soundretrain.spectrogram_settings`, :mod:`soundretrain.render`: the one
  rendering of a clip as an image (:func:`render_clip`).
* :mod:`soundretrain.manifest`: ``manifest.csv``, written by ``spectrograms`` and read
  by ``retrain``.
* :mod:`soundretrain.backbones`: the pretrained modules and their registry.
* :mod:`soundretrain.export`, :mod:`soundretrain.sidecar`: the exported model and the
  JSON that travels with it (written by ``retrain``, read by ``label_image``).
* :mod:`soundretrain.atomic_files`, :mod:`soundretrain.command_line`: safe writes and
  the commands' flag parsing.

The stage packages ``spectrograms``, ``retrain`` and ``label`` import from here and
never from each other (a test checks it).
"""
