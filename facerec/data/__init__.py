"""facerec.data: face datasets in the formats users bring, without mxnet; never imports ``nn`` or ``models``.

``recordio`` (MXNet RecordIO reader/writer), ``datasets`` (RecordDataset, ImageFolderDataset), ``verification``
(.bin pair sets), ``megaface`` (devkit lists, feature files), ``align`` (5-point ArcFace alignment), ``synthetic``
(the embedded synthetic face set), ``transforms`` (the one normalisation). Formats are
InsightFace's and mxnet's (docs/data.md).
"""
from .datasets import ImageFolderDataset, RecordDataset
from .transforms import center_crop_112x96, hflip, normalize

__all__ = ["RecordDataset", "ImageFolderDataset", "normalize", "hflip", "center_crop_112x96"]
