"""The node image builder: ``scalerunner images build`` (docs/images.md, "Building an image").

One image for every node of an architecture: Debian's kernel and a Debian root with python3 and
the node agent, the whole root as the initramfs, so a node boots it into RAM and an update is
a new image version. ``spec`` is the pure part (inputs, commands, cache keys), ``builder`` the
shell that runs mmdebstrap, pip, cpio and zstd, ``manifest`` the ``manifest.json`` beside the
files, ``node/`` the scripts that boot it (``/init``, the agent's restart loop, DHCP).
"""

from .builder import BuildResult, NullReporter, Reporter, build_image, default_cache_dir
from .manifest import MANIFEST, ImageFile, KernelInfo, Layer, Manifest, read_manifest
from .spec import ARCHES, DEFAULT_CMDLINE, BuildError, BuildSpec

__all__ = [
    "ARCHES",
    "DEFAULT_CMDLINE",
    "MANIFEST",
    "BuildError",
    "BuildResult",
    "BuildSpec",
    "ImageFile",
    "KernelInfo",
    "Layer",
    "Manifest",
    "NullReporter",
    "Reporter",
    "build_image",
    "default_cache_dir",
    "read_manifest",
]
