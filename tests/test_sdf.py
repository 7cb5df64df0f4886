"""SDF reader: exact distances, robust signs, block consistency, volumes, bad inputs.

Oracles: trimesh's containment test (rays, on watertight meshes) and closest-point query,
and the one-shot grid for block-wise reads. Resolutions are small to keep this fast.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh

from intstream.errors import InputError
from intstream.readers.sdf import open_sdf
from intstream.sdf_kernels import grid_axis, point_triangle_distance, prepare_mesh, winding_number


def _grid_points(R: int) -> np.ndarray:
    x = grid_axis(R, 0, R)
    return np.stack(np.meshgrid(x, x, x, indexing="ij"), axis=-1).reshape(-1, 3)


def _whole(reader) -> np.ndarray:
    return reader.read(tuple(slice(0, n) for n in reader.shape))[..., 0]


def _normalised(mesh: trimesh.Trimesh, meta: dict) -> trimesh.Trimesh:
    t = meta["sdf"]["transform"]
    return trimesh.Trimesh((mesh.vertices - np.array(t["center"])) * t["scale"], mesh.faces, process=False)


@pytest.fixture(scope="module")
def torus_file(tmp_path_factory):
    """A watertight, non-convex mesh (a torus, tilted so that no axis is special)."""
    mesh = trimesh.creation.torus(major_radius=1.0, minor_radius=0.35, major_sections=48, minor_sections=24)
    mesh.apply_transform(trimesh.transformations.rotation_matrix(0.4, [1, 1, 0]))
    path = tmp_path_factory.mktemp("mesh") / "torus.ply"
    mesh.export(path)
    return path, mesh


@pytest.fixture(scope="module")
def sphere_file(tmp_path_factory):
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=2.0)
    path = tmp_path_factory.mktemp("mesh") / "sphere.stl"
    mesh.export(path)
    return path, mesh


# -- kernels -------------------------------------------------------------------------


def test_point_triangle_distance_matches_trimesh():
    rng = np.random.default_rng(0)
    tris = rng.normal(size=(500, 3, 3)) * 0.2
    mesh = prepare_mesh(tris.reshape(-1, 3), np.arange(1500).reshape(-1, 3))
    points = rng.normal(size=(500, 3)) * 0.3
    got = point_triangle_distance(points, mesh, np.arange(500))
    ref = np.linalg.norm(points - trimesh.triangles.closest_point(tris, points), axis=1)
    np.testing.assert_allclose(got, ref, atol=2e-6)


def test_winding_number_closed_and_open():
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.3)
    mesh = prepare_mesh(sphere.vertices, sphere.faces)
    w = winding_number(np.array([[0, 0, 0], [0.1, -0.05, 0.1], [0.45, 0, 0], [0.3, 0.3, 0.3]]), mesh)
    np.testing.assert_allclose(w, [1, 1, 0, 0], atol=1e-5)
    # Half of the sphere removed: the centre sees half of it.
    keep = sphere.triangles_center[:, 2] > 0
    half = prepare_mesh(sphere.vertices, sphere.faces[keep])
    assert abs(winding_number(np.zeros((1, 3)), half)[0] - 0.5) < 0.05
    assert half.boundary.any() and not mesh.boundary.any()


# -- meshes --------------------------------------------------------------------------


def test_sign_agrees_with_containment_on_watertight_mesh(torus_file):
    path, mesh = torus_file
    R = 40
    reader = open_sdf(path, resolution=R)
    assert reader.meta["sdf"]["watertight"] is True
    sdf = _whole(reader).reshape(-1)
    points = _grid_points(R)
    far = np.flatnonzero(np.abs(sdf) > reader.meta["sdf"]["voxel_size"])
    far = np.random.default_rng(0).choice(far, size=4000, replace=False)  # rays are slow
    inside = _normalised(mesh, reader.meta).contains(points[far])
    agree = np.mean((sdf[far] < 0) == inside)
    assert agree >= 0.99, agree
    assert 0.02 < inside.mean() < 0.5


def test_distances_exact_near_surface(sphere_file):
    path, mesh = sphere_file
    R = 48
    reader = open_sdf(path, resolution=R)
    sdf = _whole(reader).reshape(-1)
    points = _grid_points(R)
    h = reader.meta["sdf"]["voxel_size"]
    near = np.flatnonzero(np.abs(sdf) < 3 * h)
    pick = np.random.default_rng(1).choice(near, size=min(400, near.size), replace=False)
    norm = _normalised(mesh, reader.meta)
    _, ref, _ = trimesh.proximity.closest_point(norm, points[pick])
    np.testing.assert_allclose(np.abs(sdf[pick]), ref, atol=1e-5)
    # The sign follows the (convex) polyhedron exactly; a few far voxels are exact too.
    assert np.array_equal(sdf[pick] < 0, norm.contains(points[pick]))
    far = np.random.default_rng(2).choice(np.flatnonzero(np.abs(sdf) > 5 * h), size=100, replace=False)
    _, ref_far, _ = trimesh.proximity.closest_point(norm, points[far])
    np.testing.assert_allclose(np.abs(sdf[far]), ref_far, atol=1e-5)


def test_normalisation_and_meta(sphere_file):
    path, mesh = sphere_file
    reader = open_sdf(path, resolution=16)
    meta = reader.meta["sdf"]
    assert (reader.kind, reader.shape, reader.channels, reader.dtype) == ("sdf", (16, 16, 16), 1, "float32")
    assert meta["bounds"] == [-0.5, 0.5] and meta["source_kind"] == "mesh"
    assert meta["voxel_size"] == pytest.approx(1 / 15)
    norm = _normalised(mesh, reader.meta)
    assert norm.extents.max() == pytest.approx(0.9)
    np.testing.assert_allclose(norm.bounds.mean(axis=0), 0, atol=1e-12)
    json.dumps(reader.meta)  # store attributes must be JSON


@pytest.mark.parametrize("name", ["bunny", "teapot"])
def test_open_scans_have_plausible_inside(data_dir, name):
    R = 40
    reader = open_sdf(data_dir / "meshes" / f"{name}.obj", resolution=R)
    assert reader.meta["sdf"]["watertight"] is False
    sdf = _whole(reader)
    assert sdf.dtype == np.float32
    corners = sdf[np.ix_([0, -1], [0, -1], [0, -1])]
    assert (corners > 0.2).all()  # the shape fills 0.9 of the box: corners are far outside
    assert 0.05 <= np.mean(sdf < 0) <= 0.6
    # A point deep inside the body: the centre of the box holds the bunny's and the
    # teapot's main body.
    c = R // 2
    assert (sdf[c - 1 : c + 1, c - 1 : c + 1, c - 1 : c + 1] < 0).all()
    # Negative voxels agree with the exact winding number wherever it is clearly decided.
    points = _grid_points(R)
    pick = np.random.default_rng(3).choice(R**3, size=300, replace=False)
    w = winding_number(points[pick], reader.mesh)
    clear = np.abs(w - 0.5) > 0.2
    assert np.mean((sdf.reshape(-1)[pick] < 0)[clear] == (w[clear] >= 0.5)) >= 0.99


def test_blockwise_equals_one_shot(data_dir):
    R = 37  # not a multiple of the kernel tile: ragged tiles and blocks
    reader = open_sdf(data_dir / "meshes" / "bunny.obj", resolution=R)
    whole = _whole(reader)
    pieces = np.full_like(whole, np.nan)
    edges = [0, 5, 18, 32, 37]
    for i0, i1 in zip(edges[:-1], edges[1:]):
        for j0, j1 in zip([0, 13, 37][:-1], [13, 37]):
            for k0, k1 in zip([0, 36, 37][:-1], [36, 37]):
                block = reader.read((slice(i0, i1), slice(j0, j1), slice(k0, k1)))
                assert block.shape == (i1 - i0, j1 - j0, k1 - k0, 1)
                pieces[i0:i1, j0:j1, k0:k1] = block[..., 0]
    np.testing.assert_array_equal(pieces, whole)


def test_ingest_mesh_into_store(tmp_path, sphere_file):
    from intstream.ingest import ingest
    from intstream.store import open_store

    path, _ = sphere_file
    manifest = ingest(path, tmp_path / "s.zarr", kind="sdf", resolution=20, progress=False)
    store = open_store(manifest["store"])
    assert store.kind == "sdf" and store.shape == (20, 20, 20)
    assert store.meta["sdf"]["source_kind"] == "mesh"
    reader = open_sdf(path, resolution=20)
    np.testing.assert_array_equal(store.read((slice(0, 20),) * 3), reader.read((slice(0, 20),) * 3))


# -- volumes -------------------------------------------------------------------------


def _volume():
    rng = np.random.default_rng(4)
    return rng.normal(size=(9, 12, 7)).astype(np.float32)


def _read_blocks(reader, block=(4, 5, 3)) -> np.ndarray:
    out = np.full(reader.shape, np.nan, dtype=np.float32)
    for i in range(0, reader.shape[0], block[0]):
        for j in range(0, reader.shape[1], block[1]):
            for k in range(0, reader.shape[2], block[2]):
                sl = (slice(i, min(i + block[0], reader.shape[0])), slice(j, min(j + block[1], reader.shape[1])), slice(k, min(k + block[2], reader.shape[2])))
                out[sl] = reader.read(sl)[..., 0]
    reader.close()
    return out


@pytest.mark.parametrize("trailing_channel", [False, True])
def test_npy_volume_round_trip(tmp_path, trailing_channel):
    vol = _volume()
    path = tmp_path / "v.npy"
    np.save(path, vol[..., None] if trailing_channel else vol)
    reader = open_sdf(path)
    assert reader.shape == vol.shape and reader.meta["sdf"]["source_kind"] == "volume"
    assert reader.meta["sdf"]["voxel_size"] == pytest.approx([1 / 8, 1 / 11, 1 / 6])
    np.testing.assert_array_equal(_read_blocks(reader), vol)


def test_zarr_volume_round_trip(tmp_path):
    import zarr

    vol = _volume()
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=vol.shape, chunks=(4, 4, 4), dtype="float32")
    arr[:] = vol
    np.testing.assert_array_equal(_read_blocks(open_sdf(tmp_path / "a.zarr")), vol)
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("sdf", shape=vol.shape, dtype="float64")[:] = vol
    np.testing.assert_array_equal(_read_blocks(open_sdf(tmp_path / "g.zarr")), vol)


def test_tiff_stack_round_trip(tmp_path):
    import tifffile

    vol = _volume()
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, vol)  # one page per Z slice
    reader = open_sdf(path)
    assert reader.shape == vol.shape
    np.testing.assert_array_equal(_read_blocks(reader), vol)


# -- bad inputs ----------------------------------------------------------------------


def _write(path, content: bytes | str):
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("junk.ply", b"ply\nformat binary_little_endian 1.0\nelement vertex 99\n\x00\x01garbage", "unreadable mesh|no faces"),
        ("points.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\n", "no faces"),
        ("flat.obj", "v 1 1 1\nv 1 1 1\nv 1 1 1\nf 1 2 3\n", "degenerate|no faces"),
        ("line.obj", "v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n", "degenerate|no faces"),
        ("notes.txt", "hello", "unsupported"),
    ],
)
def test_bad_meshes_raise_input_error(tmp_path, name, content, problem):
    path = _write(tmp_path / name, content)
    with pytest.raises(InputError, match=problem) as info:
        open_sdf(path, resolution=8)
    assert info.value.path == str(path) and "\n" not in info.value.message


@pytest.mark.parametrize("resolution", [1, 0, 1025, 4096])
def test_resolution_out_of_range(sphere_file, resolution):
    with pytest.raises(InputError, match="resolution"):
        open_sdf(sphere_file[0], resolution=resolution)


def test_bad_volumes_raise_input_error(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros((4, 5), dtype=np.float32))
    with pytest.raises(InputError, match="3-D"):
        open_sdf(tmp_path / "flat.npy")
    np.save(tmp_path / "rgb.npy", np.zeros((4, 5, 6, 3), dtype=np.float32))
    with pytest.raises(InputError, match="3-D"):
        open_sdf(tmp_path / "rgb.npy")
    vol = _volume()
    vol[7, 1, 2] = np.nan
    np.save(tmp_path / "nan.npy", vol)
    reader = open_sdf(tmp_path / "nan.npy")
    reader.read((slice(0, 4), slice(0, 12), slice(0, 7)))  # the NaN is elsewhere
    with pytest.raises(InputError, match=r"NaN or Inf .*\(7, 1, 2\)"):
        reader.read((slice(4, 9), slice(0, 12), slice(0, 7)))
    _write(tmp_path / "broken.npy", b"\x93NUMPY garbage")
    with pytest.raises(InputError, match="unreadable"):
        open_sdf(tmp_path / "broken.npy")
    with pytest.raises(InputError, match="no such file"):
        open_sdf(tmp_path / "missing.obj")
