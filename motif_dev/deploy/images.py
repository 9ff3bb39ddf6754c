"""Build and smoke-test the CPU trainer image with podman, without a container registry.

    python -m motif_dev.deploy.images build               # base (if missing) + wheelhouse + podman build
    python -m motif_dev.deploy.images smoke               # motif --help and `motif plan` inside the image
    python -m motif_dev.deploy.images build --base python:3.11-slim   # where a registry is reachable

Three cached steps, each skipped when its inputs have not changed:

1. **Base image** `localhost/debian-base:bookworm`: a minbase Debian 12 root filesystem made by
   debootstrap (Python 3.11, as in python:3.11-slim) and imported into podman. Needs root and the
   Debian mirror; skipped when the image exists.
2. **Wheelhouse** `build/images/wheelhouse/`: the CPU torch wheel from /opt/wheels (the image build
   has no package index, and an index would hand out a multi-GB CUDA torch), every runtime
   dependency at the version pinned in requirements.lock, and motif's own wheel (its own folder, so
   the dependency layer stays cached when only motif changes). Keyed on the lock file and pyproject.
3. **podman build** of images/cpu/Dockerfile with `--pull=never --isolation=chroot` (docker format,
   which keeps SHELL and HEALTHCHECK); podman's layer cache makes a rebuild after a code change
   take seconds.

Runs use `--runtime runc --cgroup-manager=cgroupfs` (crun cannot set cgroups or rlimits here),
`--network=none`, a read-only root filesystem and a tmpfs /tmp, as in the chart's pods.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "images"
WHEELHOUSE = BUILD / "wheelhouse"
DOCKERFILE = ROOT / "images" / "cpu" / "Dockerfile"
BASE_IMAGE = "localhost/debian-base:bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
TORCH_WHEEL_DIR = Path("/opt/wheels")
UID = 10001


class ImageError(Exception):
    """A step of the image build that failed; the message says which and why."""


def _version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def image_name() -> str:
    return f"localhost/motif-cpu:{_version()}"


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, **kwargs)


def podman() -> list[str]:
    exe = shutil.which("podman")
    if exe is None:
        raise ImageError("podman: not found; `make deps` installs podman, buildah, debootstrap and runc")
    return [exe, "--runtime", "runc", "--cgroup-manager", "cgroupfs"]


def image_exists(name: str) -> bool:
    return subprocess.run([*podman(), "image", "exists", name], check=False).returncode == 0


# ---- 1. base ---------------------------------------------------------------------------------


def ensure_base(name: str = BASE_IMAGE) -> str:
    """The local Debian 12 base, debootstrapped and imported once."""
    if image_exists(name):
        return name
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not Path(debootstrap).exists():
        raise ImageError("debootstrap: not found; `make deps` installs it")
    rootfs = BUILD / "rootfs"
    if not (rootfs / "usr" / "bin" / "python3").exists():
        shutil.rmtree(rootfs, ignore_errors=True)
        rootfs.parent.mkdir(parents=True, exist_ok=True)
        _run(
            [debootstrap, "--variant=minbase", "--include=python3,python3-venv", "bookworm", str(rootfs), DEBIAN_MIRROR]
        )
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    _run([*podman(), "import", "-", name], stdin=tar.stdout)
    if tar.wait() != 0:
        raise ImageError(f"tar of {rootfs} failed")
    return name


# ---- 2. wheelhouse ---------------------------------------------------------------------------


def runtime_requirements() -> list[str]:
    """motif's runtime dependencies (pyproject, with the k8s extra), pinned to the versions in requirements.lock."""
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "==" in line:
            name, version = line.split("==", 1)
            pins[_norm(name)] = f"{name}=={version}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # The kubernetes client too: `motif status` and `motif preflight` (the chart's helm test) in a pod.
    deps = project["dependencies"] + project["optional-dependencies"]["k8s"]
    out = []
    for dep in deps:
        name = _norm(dep.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip())
        if name not in pins:
            raise ImageError(f"requirements.lock: no pinned version of {name} (a dependency in pyproject.toml)")
        out.append(pins[name])
    return out


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def torch_wheel() -> Path:
    wheels = sorted(TORCH_WHEEL_DIR.glob("torch-*+cpu-cp311-*.whl"))
    if not wheels:
        raise ImageError(f"{TORCH_WHEEL_DIR}: no CPU torch wheel for Python 3.11 (torch-*+cpu-cp311-*.whl)")
    return wheels[-1]


def _constraints() -> Path:
    """requirements.lock without torch (torch comes from the local CPU wheel) and without extras
    (`lm-eval[hf]==...`): pip refuses a constraint with extras, and a pin is all it needs."""
    lines = [
        re.sub(r"\[[^\]]*\]", "", ln)
        for ln in (ROOT / "requirements.lock").read_text().splitlines()
        if ln.strip() and not ln.startswith("#") and _norm(ln.split("==")[0]) != "torch"
    ]
    path = BUILD / "constraints.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def ensure_wheelhouse() -> Path:
    """build/images/wheelhouse/{deps,motif}/ and requirements.txt; deps rebuilt only on change."""
    deps_dir = WHEELHOUSE / "deps"
    reqs = runtime_requirements()
    torch = torch_wheel()
    key = hashlib.sha256("\n".join([*reqs, torch.name, (ROOT / "requirements.lock").read_text()]).encode())
    stamp = WHEELHOUSE / "deps.sha256"
    if not (stamp.exists() and stamp.read_text() == key.hexdigest() and any(deps_dir.glob("torch-*.whl"))):
        shutil.rmtree(deps_dir, ignore_errors=True)
        deps_dir.mkdir(parents=True)
        others = [r for r in reqs if _norm(r.split("==")[0]) != "torch"]
        pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(deps_dir)]
        _run([*pip, "--constraint", str(_constraints()), str(torch), *others])
        stamp.write_text(key.hexdigest())
    # Inside the image: torch from its local wheel, the rest by pinned name.
    (WHEELHOUSE / "requirements.txt").write_text(
        "\n".join(f"torch=={torch.name.split('-')[1]}" if _norm(r.split("==")[0]) == "torch" else r for r in reqs)
        + "\n"
    )
    motif_dir = WHEELHOUSE / "motif"
    shutil.rmtree(motif_dir, ignore_errors=True)
    motif_dir.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    # Fixed timestamps: the same source gives the same wheel bytes, so podman reuses its layer.
    env = {**os.environ, "SOURCE_DATE_EPOCH": "315532800"}
    _run([*pip, "--wheel-dir", str(motif_dir), str(ROOT)], env=env)
    return WHEELHOUSE


# ---- 3. build and run ------------------------------------------------------------------------


def build(base: str = BASE_IMAGE, tag: str | None = None) -> str:
    """Build images/cpu/Dockerfile on `base`; returns the image name."""
    tag = tag or image_name()
    if base == BASE_IMAGE:
        ensure_base(base)
    elif not image_exists(base):
        raise ImageError(f"--base {base}: not in local storage (builds never pull; `podman pull {base}` first)")
    ensure_wheelhouse()
    cmd = [*podman(), "build", "--isolation=chroot", "--pull=never", "--layers", "--format", "docker"]
    cmd += ["--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"VERSION={_version()}", "-f", str(DOCKERFILE)]
    # The build stage (the virtualenv with torch, minutes to make) gets a tag of its own, so
    # `podman image prune` does not throw away the layer cache that makes rebuilds take seconds.
    _run([*cmd, "--target", "build", "-t", f"{tag.rsplit(':', 1)[0]}:build-cache", str(ROOT)])
    _run([*cmd, "-t", tag, str(ROOT)])
    return tag


def run(
    image: str,
    args: list[str],
    mounts: dict[Path, str] | None = None,
    workdir: str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess:
    """Run `args` in `image` like a pod of the chart: non-root, read-only root, no network."""
    cmd = [*podman(), "run", "--rm", "--network=none", "--pull=never", "--no-healthcheck"]
    cmd += ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]  # runc here cannot raise them
    cmd += ["--read-only", "--tmpfs", "/tmp:rw,mode=1777", "--shm-size", "256m"]
    cmd += ["--user", f"{UID}:{UID}", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    for host, target in (mounts or {}).items():
        cmd += ["-v", f"{host}:{target}"]
    for k, v in (env or {}).items():
        cmd += ["-e", f"{k}={v}"]
    if workdir:
        cmd += ["-w", workdir]
    cmd += [image, *args]
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def smoke(image: str) -> None:
    """motif --help and `motif plan` of the tiny stage files inside the image."""
    for args in (["motif", "--help"], ["python3", "-c", "import torch, motif; assert not torch.version.cuda"]):
        result = run(image, args)
        if result.returncode != 0:
            raise ImageError(f"{' '.join(args)} in {image} failed:\n{result.stdout}{result.stderr}")
        print(result.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m motif_dev.deploy.images", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the CPU image (base, wheelhouse, podman build)")
    b.add_argument("--base", default=BASE_IMAGE, help=f"base image in local storage (default {BASE_IMAGE})")
    b.add_argument("--tag", default=None, help=f"image name (default {image_name()})")
    s = sub.add_parser("smoke", help="run motif --help inside the image")
    s.add_argument("--image", default=image_name())
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            print(build(args.base, args.tag))
        else:
            smoke(args.image)
    except (ImageError, subprocess.CalledProcessError) as e:
        print(f"images: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
