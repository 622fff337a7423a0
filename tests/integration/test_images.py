"""OCI images pulled from a real registry on loopback with skopeo and unpacked with umoci."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from pathlib import Path

import pytest

from scalerunner.nodeagent.images import ImageError, ImageStore
from tests.integration.oci_fixtures import Registry, registry  # noqa: F401

pytestmark = pytest.mark.slow


def counting_skopeo(tmp_path: Path) -> tuple[str, Path]:
    """The real skopeo behind a wrapper that logs each subcommand, to count what a pull did."""
    log = tmp_path / "skopeo.log"
    wrapper = tmp_path / "skopeo"
    real = shutil.which("skopeo")
    wrapper.write_text(f'#!/bin/sh\necho "$2" >> {log}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper), log


def test_concurrent_pulls_of_one_image_unpack_it_once_and_later_pulls_use_the_cache(
    registry: Registry,  # noqa: F811
    tmp_path: Path,
) -> None:
    ref = registry.push_busybox(tmp_path / "build", "test/cache:1", marker="cached-image")
    skopeo, log = counting_skopeo(tmp_path)
    store = ImageStore(tmp_path / "images", insecure={registry.host}, skopeo=skopeo)

    async def pulls() -> None:
        images = await asyncio.gather(*(store.pull(ref) for _ in range(4)))
        assert len({i.rootfs for i in images}) == 1
        assert log.read_text().split() == ["inspect", "copy"]
        again = await store.pull(ref)
        assert again == images[0]
        assert log.read_text().split() == ["inspect", "copy", "inspect"]  # digest checked, nothing copied

    asyncio.run(pulls())
    [entry] = store.cached()
    image = asyncio.run(store.pull(ref))
    assert image.rootfs == entry / "rootfs"
    assert image.digest.startswith("sha256:") and entry.name == image.digest.replace(":", "-")
    assert (image.rootfs / "etc" / "marker").read_text() == "cached-image\n"
    assert os.readlink(image.rootfs / "bin" / "sh") == "busybox"
    assert "IMAGE_VAR=from-image" in image.env
    assert [p.name for p in (tmp_path / "images").iterdir()] == [entry.name]  # no temp dirs left


def test_an_image_the_registry_does_not_have_is_an_error_naming_it(
    registry: Registry,  # noqa: F811
    tmp_path: Path,
) -> None:
    ref = f"{registry.host}/test/absent:1"
    with pytest.raises(ImageError, match=r"manifest unknown") as info:
        asyncio.run(ImageStore(tmp_path, insecure={registry.host}).pull(ref))
    assert info.value.image == ref and str(info.value).startswith(f"image {ref}: skopeo inspect failed")


def test_an_unreachable_registry_is_an_error_naming_the_image(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{s.getsockname()[1]}"
    ref = f"{host}/test/busybox:1"
    with pytest.raises(ImageError, match="connection refused") as info:
        asyncio.run(ImageStore(tmp_path, insecure={host}).pull(ref))
    assert info.value.image == ref


def test_a_plain_http_registry_not_marked_insecure_is_refused(
    registry: Registry,  # noqa: F811
    tmp_path: Path,
) -> None:
    ref = registry.push_busybox(tmp_path / "build", "test/tls:1")
    with pytest.raises(ImageError, match="server gave HTTP response to HTTPS client") as info:
        asyncio.run(ImageStore(tmp_path / "images").pull(ref))
    assert info.value.image == ref
