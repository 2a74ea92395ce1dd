"""Malformed input raises InputError whose message names the file, row or column and the fix."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from cryoconf.data import (
    ImageStack,
    ParticleDataset,
    load_particles,
    read_metadata,
    write_mrcs,
)
from cryoconf.errors import InputError


@pytest.fixture
def r31(shared_data, tmp_path):
    """A writable copy of relion31.star + relion31.mrcs."""
    for f in ("relion31.star", "relion31.mrcs"):
        shutil.copy(shared_data / "io" / f, tmp_path / f)
    return tmp_path / "relion31.star"


def edit(path, old, new, count=1):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, count))
    return path


def test_truncated_star(r31):
    text = r31.read_text()
    r31.write_text(text[: text.index("000003@relion31.mrcs") + 5])
    with pytest.raises(InputError, match=r"relion31\.star: line \d+ \(data_particles row 3\).*truncated"):
        read_metadata(r31)


def test_truncated_in_header(r31):
    text = r31.read_text()
    r31.write_text(text[: text.index("_rlnDefocusU")])
    with pytest.raises(InputError, match=r"relion31\.star.*data_particles has no particle rows"):
        read_metadata(r31)


def test_missing_required_column(r31):
    edit(r31, "_rlnVoltage #5", "_rlnVoltageX #5")
    with pytest.raises(InputError, match=r"relion31\.star: missing column _rlnVoltage.*--voltage"):
        read_metadata(r31)
    m = read_metadata(r31, voltage_kV=300)
    assert np.all(m.voltage_kV == 300)


def test_nan_defocus(r31):
    edit(r31, "12906.018499", "nan")
    with pytest.raises(InputError, match=r"relion31\.star: data_particles row 2 \(line \d+\): column _rlnDefocusU.*NaN"):
        read_metadata(r31)


def test_non_numeric_value(r31):
    edit(r31, "12730.825404", "12x30.8")
    with pytest.raises(InputError, match=r"row 3 .*_rlnDefocusU has non-numeric value '12x30.8'"):
        read_metadata(r31)


def test_stack_shorter_than_star(r31):
    edit(r31, "000005@relion31.mrcs", "000009@relion31.mrcs")
    with pytest.raises(InputError, match=r"row 5: image '000009@relion31.mrcs'.*holds only 5 images"):
        load_particles(r31)


def test_missing_stack_names_path_and_datadir(r31, tmp_path):
    (tmp_path / "relion31.mrcs").unlink()
    with pytest.raises(InputError, match=r"relion31\.mrcs' not found \(datadir='/nowhere'\).*tried"):
        load_particles(r31, datadir="/nowhere")


def test_unknown_extension(tmp_path):
    (tmp_path / "particles.xml").write_text("<x/>")
    with pytest.raises(InputError, match=r"particles\.xml: unknown metadata file type '\.xml'"):
        read_metadata(tmp_path / "particles.xml")


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="nope.star: no such file"):
        read_metadata(tmp_path / "nope.star")


def test_inconsistent_box_across_optics_groups(shared_data, tmp_path):
    p = tmp_path / "og.star"
    shutil.copy(shared_data / "io" / "relion31.6opticsgroups.star", p)
    edit(p, "1.240000 196 2 0 0.003119", "1.240000 200 2 0 0.003119")
    with pytest.raises(InputError, match=r"og\.star: inconsistent box size.*optics groups"):
        read_metadata(p)


def test_unknown_optics_group(r31):
    text = r31.read_text().replace("000004@relion31.mrcs            1", "000004@relion31.mrcs            7")
    r31.write_text(text)
    with pytest.raises(InputError, match=r"row 4 .*optics group 7 is not in data_optics"):
        read_metadata(r31)


def test_nan_pixel_in_image(tmp_path):
    imgs = np.zeros((3, 8, 8), np.float32)
    write_mrcs(tmp_path / "s.mrcs", imgs, 1.0)
    import mrcfile

    with mrcfile.open(tmp_path / "s.mrcs", "r+") as mrc:
        mrc.data[1, 2, 3] = np.nan
    stack = ImageStack.from_file(tmp_path / "s.mrcs")
    stack[[0, 2]]
    with pytest.raises(InputError, match=r"image '2@.*s\.mrcs' \(particle 2\) contains NaN"):
        stack[[0, 1]]


def test_truncated_stack_file(tmp_path):
    write_mrcs(tmp_path / "s.mrcs", np.zeros((4, 8, 8), np.float32), 1.0)
    data = (tmp_path / "s.mrcs").read_bytes()
    (tmp_path / "s.mrcs").write_bytes(data[: 1024 + 2 * 256 + 10])
    with pytest.raises(InputError, match=r"s\.mrcs: header says 4 images .* only 2 complete"):
        ImageStack.from_file(tmp_path / "s.mrcs")


def test_ind_out_of_range(r31, tmp_path):
    np.save(tmp_path / "ind.npy", np.array([0, 5]))
    with pytest.raises(InputError, match=r"ind\.npy: index 5 \(entry 1\) is out of range for 5 particles"):
        load_particles(r31, ind=tmp_path / "ind.npy")
    m = read_metadata(r31)
    with pytest.raises(InputError, match="index -1"):
        ParticleDataset(m, ind=[-1])


def test_relion30_without_box_and_stack(shared_data):
    with pytest.raises(InputError, match=r"PfCRT\.star: the box size is stated nowhere.*-D/--box"):
        read_metadata(shared_data / "io" / "FinalRefinement-OriginalParticles-PfCRT.star")


def test_relion30_without_pixel_size(shared_data, tmp_path):
    p = tmp_path / "e.star"
    shutil.copy(shared_data / "io" / "empiar_10076_7.star", p)
    edit(p, "_rlnMagnification", "_rlnMagnificationX")
    with pytest.raises(InputError, match=r"e\.star: no pixel size.*--apix"):
        read_metadata(p, box=320)
    assert read_metadata(p, box=320, apix=1.31).apix_A[0] == 1.31


def test_cs_2d_only_asked_for_3d(shared_data):
    with pytest.raises(InputError, match=r"J2_particles_exported\.cs: 3D poses requested.*alignments2D"):
        load_particles(shared_data / "io" / "cryosparc_J2_particles_exported.cs", require_poses=True, load_images=False)


def test_cs_missing_ctf_field(tmp_path, shared_data):
    arr = np.load(shared_data / "io" / "empiar_10076_7.cs")
    names = [n for n in arr.dtype.names if n != "ctf/accel_kv"]
    np.save(tmp_path / "x.npy", arr[names])
    (tmp_path / "x.npy").rename(tmp_path / "x.cs")
    with pytest.raises(InputError, match=r"x\.cs: missing field 'ctf/accel_kv'"):
        read_metadata(tmp_path / "x.cs")


def test_not_a_cs_file(tmp_path):
    (tmp_path / "junk.cs").write_bytes(b"not numpy at all")
    with pytest.raises(InputError, match=r"junk\.cs: not a cryoSPARC \.cs file"):
        read_metadata(tmp_path / "junk.cs")


def test_pkl_count_mismatch(tmp_path, r31):
    import pickle

    with open(tmp_path / "pose.pkl", "wb") as fh:
        pickle.dump((np.tile(np.eye(3), (4, 1, 1)), np.zeros((4, 2))), fh)
    with pytest.raises(InputError, match="particle counts differ"):
        read_metadata(r31, poses=tmp_path / "pose.pkl")


def test_box_option_conflicts_with_file(r31):
    with pytest.raises(InputError, match=r"box 256 \(_rlnImageSize\) but -D/--box is 128"):
        read_metadata(r31, box=128)
