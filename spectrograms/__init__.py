"""spectrograms stage: labelled audio -> per-class log-mel spectrogram images + manifest.

The pieces other stages use::

    from spectrograms import SpectrogramSettings, load_audio, render_clip
    settings = SpectrogramSettings.load_json("spec/spectrogram_config.json")
    image = render_clip(load_audio("clip.wav", settings.sample_rate), settings.sample_rate, settings)
"""
from soundretrain.audio import AudioReadError, load_audio
from soundretrain.render import render_clip
from soundretrain.spectrogram_settings import CONFIG_FILENAME, SpectrogramSettings

__all__ = ["AudioReadError", "CONFIG_FILENAME", "SpectrogramSettings", "load_audio", "render_clip"]
