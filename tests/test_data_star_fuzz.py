"""Property-based tests of the STAR reader: valid tables round-trip, corruptions raise InputError only."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryoconf.data import ParticleMetadata, read_metadata, read_star, write_relion31_star, write_star
from cryoconf.errors import InputError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)


@st.composite
def metadata(draw):
    n = draw(st.integers(1, 8))
    arr = lambda lo, hi: np.array(draw(st.lists(st.floats(lo, hi), min_size=n, max_size=n)))  # noqa: E731
    angles = np.stack([arr(-180, 180), arr(0.5, 179.5), arr(-180, 180)], axis=1)
    from scipy.spatial.transform import Rotation

    rot = Rotation.from_euler("ZYZ", angles, degrees=True).as_matrix().transpose(0, 2, 1)
    groups = np.array(draw(st.lists(st.integers(1, 3), min_size=n, max_size=n)))
    return ParticleMetadata(
        image_names=np.array([f"{i + 1}@stack_{draw(st.sampled_from(['a', 'b']))}.mrcs" for i in range(n)], dtype=object),
        rotations=rot,
        shifts_A=np.stack([arr(-50, 50), arr(-50, 50)], axis=1),
        defocus_u_A=arr(1000, 50000),
        defocus_v_A=arr(1000, 50000),
        defocus_angle_deg=arr(-180, 180),
        voltage_kV=np.array([[300.0, 200.0, 100.0][g - 1] for g in groups]),
        cs_mm=np.array([[2.7, 0.01, 1.6][g - 1] for g in groups]),
        amplitude_contrast=np.full(n, 0.1),
        phase_shift_deg=arr(0, 180),
        bfactor_A2=arr(0, 200),
        ctf_scale=np.ones(n),
        apix_A=np.array([[1.0, 1.5, 0.89][g - 1] for g in groups]),
        box=np.full(n, draw(st.integers(8, 512))),
        optics_group=groups,
        source="hypothesis",
    )


@SETTINGS
@given(meta=metadata())
def test_valid_particle_tables_round_trip(meta, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "p.star"
    write_relion31_star(path, meta)
    back = read_metadata(path, require_poses=True)
    np.testing.assert_allclose(back.rotations, meta.rotations, atol=1e-6)
    np.testing.assert_allclose(back.shifts_A, meta.shifts_A, atol=1e-6)
    for f in ("defocus_u_A", "defocus_v_A", "voltage_kV", "cs_mm", "phase_shift_deg", "bfactor_A2", "apix_A"):
        np.testing.assert_allclose(getattr(back, f), getattr(meta, f), rtol=1e-7, atol=1e-9)
    assert list(back.image_names) == list(meta.image_names)


token = st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="\"'#"), min_size=1, max_size=8).filter(
    lambda s: not s.startswith(("_", "data_", "loop_"))
)


@SETTINGS
@given(
    columns=st.lists(st.from_regex(r"rln[A-Z][a-zA-Z]{0,10}", fullmatch=True), min_size=1, max_size=6, unique=True),
    data=st.data(),
)
def test_generic_tables_round_trip(columns, data, tmp_path_factory):
    n = data.draw(st.integers(0, 6))
    table = {}
    for c in columns:
        if data.draw(st.booleans()):
            table[c] = np.array(data.draw(st.lists(finite, min_size=n, max_size=n)), dtype=np.float64)
        else:
            table[c] = np.array(data.draw(st.lists(token | st.text(" ab", min_size=1, max_size=3), min_size=n, max_size=n)), dtype=object)
    path = tmp_path_factory.mktemp("fuzz") / "t.star"
    write_star(path, [("things", table)])
    got = read_star(path)["things"]
    assert got.columns == columns and len(got) == n
    for c in columns:
        if table[c].dtype == object:
            assert list(got.strings(c)) == list(table[c])
        else:
            np.testing.assert_allclose(got.floats(c), table[c], rtol=1e-9)


JUNK = ["nan", "inf", "-inf", "1e999", "abc", "#", "_rlnJunk", "loop_", "data_x", '"', "'", "@", "--", "1,5", "0", "-1", "1@"]


@pytest.fixture(scope="module")
def valid_text(shared_data):
    return (shared_data / "io" / "relion31.star").read_text()


def check_never_other_exceptions(path):
    try:
        m = read_metadata(path)
    except InputError as exc:
        assert str(exc)
        return
    for f in ("defocus_u_A", "defocus_v_A", "defocus_angle_deg", "voltage_kV", "cs_mm", "amplitude_contrast",
              "phase_shift_deg", "bfactor_A2", "ctf_scale", "apix_A"):
        assert np.isfinite(getattr(m, f)).all(), f
    if m.rotations is not None:
        assert np.isfinite(m.rotations).all() and np.isfinite(m.shifts_A).all()


@SETTINGS
@given(frac=st.floats(0.0, 1.0))
def test_truncation_raises_input_error_or_is_clean(frac, valid_text, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "t.star"
    path.write_text(valid_text[: int(frac * len(valid_text))])
    check_never_other_exceptions(path)


@SETTINGS
@given(data=st.data())
def test_junk_tokens_raise_input_error_or_are_clean(data, valid_text, tmp_path_factory):
    lines = valid_text.splitlines()
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(lines) - 1))
        toks = lines[i].split() or [""]
        j = data.draw(st.integers(0, len(toks)))
        junk = data.draw(st.sampled_from(JUNK) | token)
        if data.draw(st.booleans()) and j < len(toks):
            toks[j] = junk  # replace a token
        else:
            toks.insert(j, junk)  # insert one
        lines[i] = " ".join(toks)
    path = tmp_path_factory.mktemp("fuzz") / "j.star"
    path.write_text("\n".join(lines) + "\n")
    check_never_other_exceptions(path)
