"""Data layer: density targets, masks, normalisation, readers, synthetic cells, augmentation.

numpy/scipy/scikit-image only: nothing here imports torch, napari or Qt.
"""

from napari_nalu_count.data.augment import Augmenter, ElasticField
from napari_nalu_count.data.density import (
    DEFAULT_SIGMA,
    as_points,
    dots_to_density,
    points_inside,
)
from napari_nalu_count.data.masks import (
    instance_sizes,
    instances_to_classes,
    instances_to_dots,
    painted_to_instances,
    relabel_sequential,
    remove_small_instances,
    typical_diameter,
)
from napari_nalu_count.data.normalize import percentile_normalize
from napari_nalu_count.data.readers import (
    Sample,
    load_aitslab,
    load_bbbc039,
    load_dsb2018,
    load_label_folder,
    load_labels_sample,
    load_points_sample,
    load_vgg,
    read_image,
    read_labels,
    read_points_csv,
    write_points_csv,
)
from napari_nalu_count.data.synthetic import (
    extrapolation_split,
    synthetic_cells,
    synthetic_dataset,
    synthetic_timelapse,
)

__all__ = [
    "DEFAULT_SIGMA",
    "Augmenter",
    "ElasticField",
    "Sample",
    "as_points",
    "dots_to_density",
    "extrapolation_split",
    "instance_sizes",
    "instances_to_classes",
    "instances_to_dots",
    "load_aitslab",
    "load_bbbc039",
    "load_dsb2018",
    "load_label_folder",
    "load_labels_sample",
    "load_points_sample",
    "load_vgg",
    "painted_to_instances",
    "percentile_normalize",
    "points_inside",
    "read_image",
    "read_labels",
    "read_points_csv",
    "relabel_sequential",
    "remove_small_instances",
    "synthetic_cells",
    "synthetic_dataset",
    "synthetic_timelapse",
    "typical_diameter",
    "write_points_csv",
]
