"""``export --resize/--crop-pct/--mean/--std``: what they mean, what they refuse, what the manifest records.

The reference for ``--crop-pct`` is timm's eval transform (``transforms_imagenet_eval``): resize the
shorter side to ``floor(img_size / crop_pct)``, then center-crop ``img_size``; the augreg ViTs'
crop_pct 0.9 at 224 is a resize of 248. Bad values fail before anything slow, with one line naming
the option and no folder written.
"""

from __future__ import annotations

import json

import pytest
from helpers import hf_vit

from vit_deploy.artifact import read_manifest
from vit_deploy.errors import UsageError
from vit_deploy.images.decode import RESAMPLE
from vit_deploy.specs import INTERPOLATIONS, Preprocessing, preprocessing_options
from vit_deploy.steps.export import ExportOptions, export_artifact

EXPORT = ("export", "--model", "test", "--res", "32", "--num-classes", "5")


@pytest.mark.parametrize(("img_size", "crop_pct", "resize"), [(224, 0.9, 248), (224, 0.875, 256), (384, 1.0, 384),
                                                               (32, 0.9, 35)])
def test_crop_pct_is_timms_resize(img_size, crop_pct, resize):
    assert preprocessing_options(img_size, crop_pct=crop_pct) == {"resize": resize}
    assert preprocessing_options(img_size, resize=resize, crop_pct=crop_pct) == {"resize": resize}  # they agree


def test_resize_and_crop_pct_that_disagree_are_refused_before_anything_runs(tmp_path):
    opts = ExportOptions("test", 224, resize=256, crop_pct=0.9, out_dir=tmp_path / "out")
    with pytest.raises(UsageError, match=r"--resize 256 and --crop-pct 0.9 disagree.*--resize 248"):
        export_artifact(opts)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("args", "option"), [
    (["--resize", "0"], "--resize"),
    (["--resize", "31"], "--res"),  # the 32 px crop does not fit
    (["--resize", "5000"], "--resize"),
    (["--crop-pct", "0"], "--crop-pct"),
    (["--crop-pct", "1.2"], "--crop-pct"),
    (["--crop-pct", "nan"], "--crop-pct"),
    (["--resize", "40", "--crop-pct", "0.9"], "--crop-pct"),
    (["--mean", "0.5,0.5"], "--mean"),
    (["--mean", "a,b,c"], "--mean"),
    (["--mean", "0.5,inf,0.5"], "--mean"),
    (["--std", "0.5,0,0.5"], "--std"),
    (["--std", "-1"], "--std"),
])
def test_bad_override_is_one_line_naming_the_option_and_writes_nothing(run_cli, tmp_path, args, option):
    out = tmp_path / "out"
    code, _, err = run_cli(*EXPORT, "--out", str(out), *args)
    assert code == 1 and "Traceback" not in err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and option in err, err
    assert not out.exists()


def test_overrides_are_recorded_and_win_over_the_checkpoints_config(run_cli, tmp_path):
    weights = tmp_path / "hf"
    hf_vit(image_size=32, num_labels=5).save_pretrained(weights)
    (weights / "preprocessor_config.json").write_text(json.dumps({
        "do_resize": True, "size": {"height": 32, "width": 32}, "resample": 3, "do_normalize": True,
        "image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]}))
    code, _, err = run_cli(*EXPORT, "--weights", str(weights), "--out", str(tmp_path / "own"))
    assert code == 0, err
    own = read_manifest(tmp_path / "own")["preprocessing"]
    assert (own["resize"], own["mean"], own["std"]) == (32, [0.1, 0.2, 0.3], [0.4, 0.5, 0.6])

    code, _, err = run_cli(*EXPORT, "--weights", str(weights), "--out", str(tmp_path / "over"),
                           "--crop-pct", "0.8", "--std", "0.25")
    assert code == 0, err
    over = read_manifest(tmp_path / "over")["preprocessing"]
    # the options replace resize and std; the rest stays the checkpoint's
    assert over == own | {"resize": 40, "std": [0.25, 0.25, 0.25]}


def test_preprocessing_itself_refuses_what_would_certify_a_broken_artifact():
    for bad in ({"std": (0.5, 0.0, 0.5)}, {"mean": (float("nan"),) * 3}, {"crop": 16}, {"interpolation": "cubic"},
                {"resize": "8"}, {"layout": "NHWC"}):
        with pytest.raises(UsageError, match=next(iter(bad))):
            Preprocessing(**({"resize": 8, "crop": 8} | bad))
    assert Preprocessing(8, 8, mean=(0.5,), std=[0.2]).std == (0.2, 0.2, 0.2)  # one value: every channel


def test_every_known_interpolation_can_be_applied():
    assert set(INTERPOLATIONS) == set(RESAMPLE)
