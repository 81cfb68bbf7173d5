"""Image arithmetic shared by preprocessing, training and serving.

:mod:`~medray.imaging.normalize` (the model input spec, Hounsfield units, windows, resampling) and
:mod:`~medray.imaging.augment` (the one training augmentation: DALI on GPU nodes, torch elsewhere).
"""
