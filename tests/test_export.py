"""Exports under concurrency: a trainer and an --mode=eval watcher export the same step."""

import os

from simclr_tf2.export import export_step, is_saved_model
from simclr_tf2.models.resnet import ResNet
from simclr_tf2.models.simclr import SimCLRModel


def test_an_export_does_not_touch_another_writers_work_in_progress(tmp_path):
    model = SimCLRModel(ResNet(18, 0.25, cifar_stem=True), num_classes=3)
    model.build((None, 8, 8, 3))
    root = tmp_path / "saved_model"
    # Another process is writing step 30 right now (its temporary directory; the name
    # the exporter used to share with every writer of that step).
    busy = root / "30.tmp" / "variables"
    busy.mkdir(parents=True)
    (busy / "part").write_text("being written")
    path = export_step(model, str(tmp_path), 30, keep=1)
    assert path == str(root / "30") and is_saved_model(path)
    assert (busy / "part").read_text() == "being written"
    # Our own temporary directory is gone; the export stands beside the other's.
    assert sorted(os.listdir(root)) == ["30", "30.tmp"]
    # Exporting the same step again (an eval watcher after the trainer) replaces it whole.
    assert is_saved_model(export_step(model, str(tmp_path), 30, keep=1))
