"""The docks as a user reaches them: through the plugin manifest (Plugins and Layers menus),
and the Count in regions dock."""

from __future__ import annotations

import csv

import numpy as np
import pytest

PLUGIN = "napari-nalu-count"
MENUS = {
    "napari/layers/segment": ["count_widget", "segment_widget"],
    "napari/layers/measure": ["regions_widget", "batch_widget"],
    "napari/layers/annotate": ["finetune_widget"],
}


def _manifest():
    from npe2 import PluginManifest

    return PluginManifest.from_distribution(PLUGIN)


def test_manifest_menus_place_the_docks():
    menus = _manifest().contributions.menus
    got = {menu: [item.command.split(".", 1)[1] for item in items] for menu, items in menus.items()}
    assert got == MENUS


@pytest.mark.gui
def test_every_dock_opens_through_the_manifest(make_napari_viewer):
    import importlib

    from napari._app_model import get_app_model

    manifest = _manifest()
    commands = {c.id: c.python_name for c in manifest.contributions.commands}
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.float32), name="img")
    for contribution in manifest.contributions.widgets:
        module, cls = commands[contribution.command].split(":")
        expected = getattr(importlib.import_module(module), cls)
        dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, contribution.display_name)
        assert isinstance(widget, expected), contribution.display_name
        assert [layer.name for layer in widget.viewer.layers][0] == "img"  # a viewer proxy
        assert widget.isVisibleTo(dock)
    # the Layers menu lists them where the manifest says
    app = get_app_model()
    for menu, names in MENUS.items():
        ids = {
            getattr(item, "command", None) and item.command.id for item in app.menus.get_menu(menu)
        }
        for name in names:
            assert any(i and i.startswith(PLUGIN) and name in i for i in ids), (menu, name, ids)


@pytest.mark.gui
def test_regions_dock_counts_in_shapes_and_follows_them(make_napari_viewer, tmp_path):
    from napari_nalu_count._widgets._inference import RunParams
    from napari_nalu_count._widgets.count_widget import CountOutput, apply_count_results
    from napari_nalu_count._widgets.regions_widget import RegionsWidget
    from napari_nalu_count.infer import CountResult

    viewer = make_napari_viewer()
    source = viewer.add_image(np.zeros((2, 20, 20)), name="movie", scale=(1, 2, 2))
    widget = RegionsWidget(viewer)
    assert not widget.count_button.isEnabled() and "count an image" in widget.hint_label.text()
    density = np.zeros((2, 20, 20), np.float32)
    density[0, 2, 2], density[1, 2, 2], density[1, 15, 15] = 1.0, 2.0, 0.5
    result = CountResult(density.sum(axis=(1, 2)), density, np.zeros((0, 3)), "TYX")
    apply_count_results(viewer, source, CountOutput(result), RunParams("m", axes="TYX"))
    assert widget.density_combo.value is viewer.layers["movie density"]  # preferred
    assert "Shapes" in widget.hint_label.text()
    # a region over the top-left quarter, in world coordinates (the layers' scale is 2)
    shapes = viewer.add_shapes([[[0, 0], [18, 18]]], shape_type="rectangle", name="roi")
    assert widget.regions_combo.value is shapes and widget.count_button.isEnabled()
    summary = widget.count()
    np.testing.assert_allclose(summary.extra["region 1"], [1.0, 2.0])
    np.testing.assert_allclose(summary.counts, [1.0, 2.5])
    assert widget.results.table.rowCount() == 2 and widget.results.table.columnCount() == 3
    shapes.add_rectangles([[20, 20], [40, 40]])  # the table follows the shapes
    np.testing.assert_allclose(widget.results.summary.extra["region 2"], [0.0, 0.5])
    rows = list(csv.DictReader(widget.export_csv(tmp_path / "r.csv").open()))
    assert [r["region 2"] for r in rows] == ["0.00", "0.50"]
