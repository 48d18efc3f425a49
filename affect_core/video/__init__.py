"""Video in, features out: the ``video`` input layout (docs/video.md).

One module per stage: ``decode`` (PyAV, streamed frames, constant-rate check), ``detect`` (dlib's HOG face
detector every few frames, boxes interpolated between), ``align`` (the face at a fixed size),
``lgbp_top`` (Gabor bank + LBP-TOP histograms), ``transform`` (the PCA fitted on train frames, stored with the dataset
and the model bundle), ``extract`` (one video through every stage in bounded memory), ``layout`` (the corpus reader
and ingest), ``score`` (scoring video folders with a model bundle). Settings: ``config.VideoConfig``.
"""
