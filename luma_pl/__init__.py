"""luma-pl: a PyTorch Lightning framework for a streaming cross-modal alignment bridge.

Folders, one concept each:
- ``luma_pl.encoders``  frozen CLIP / CLAP / MiniLM / WordLlama encoders behind one interface
- ``luma_pl.media``     audio, image and video decoding for the encoders
- ``luma_pl.corpus``    the offline demo corpus (docstrings of installed packages)
- ``luma_pl.bridge``    streaming Procrustes and learned bridges
- ``luma_pl.memory``    the tiered hot/warm memory
- ``luma_pl.metrics``   retrieval metrics
- ``data_modules``      WebDataset shard writing and stream replay (top-level package)
- ``callbacks``         Lightning callbacks (top-level package)
"""

__version__ = "0.1.0"
