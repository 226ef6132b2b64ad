"""``train``: class folders of audio in, a model folder out (see :mod:`flows.train.core`)."""
