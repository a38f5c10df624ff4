#!/usr/bin/env python3
"""OCI image archives without Docker: the test cluster's images, built from files on this host.

Owns one thing: turning a list of host files into an OCI image layout archive (a tar holding
`oci-layout`, `index.json` and `blobs/sha256/...`) that `ctr images import` takes. One
uncompressed layer, one config, one manifest; the index entry carries the full reference
(`io.containerd.image.name`, what containerd names the image) and the tag
(`org.opencontainers.image.ref.name`). Which files go into which image is `tests/cluster/images`'
business, not this file's.

    image.py build --name localhost/weft/test-app:dev --out OUT/test-app.tar \\
        --entrypoint /usr/local/bin/weft-test-app \\
        --file target/release/weft-test-app:/usr/local/bin/weft-test-app --libs
    image.py digest OUT/test-app.tar        # prints "REF DIGEST" of the archive's manifest

Every image also gets /tmp (1777), /run, and in /etc a `passwd` and `group` naming root, the
proxy's user `weft` (uid and gid 2102, as Linkerd's proxy; the Dockerfile creates the same user)
and nobody, an `nsswitch.conf` (`hosts: files dns`) and an `hosts` with localhost (the kubelet
mounts its own over it).

The layer is deterministic: entries sorted, mtime 0, owner 0:0, no user or group names, file
modes as on the host. The same inputs give the same digests, and `build` leaves an archive that
already holds the same manifest untouched (not even rewritten), so an unchanged image costs
nothing to import again.

`--libs` adds every shared library the image's ELF files need, as `ldd` on this host finds them
(the dynamic loader `/lib64/ld-linux-x86-64.so.2` too): the real file at its real path, and a
symlink at each name `ldd` gave that is not the real path. Stdlib only.
"""

import argparse
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile

PROXY_UID = 2102  # the user weft-proxy runs as; the Dockerfile's `weft` user is the same
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"

BASE_FILES = {
    "/etc/passwd": (
        "root:x:0:0:root:/root:/usr/sbin/nologin\n"
        f"weft:x:{PROXY_UID}:{PROXY_UID}:weft-proxy:/nonexistent:/usr/sbin/nologin\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    ),
    "/etc/group": f"root:x:0:\nweft:x:{PROXY_UID}:\nnogroup:x:65534:\n",
    "/etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
    "/etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
}
BASE_DIRS = {"/tmp": 0o1777, "/etc": 0o755, "/run": 0o755, "/root": 0o700}


class Fail(Exception):
    """A problem with the inputs, reported as one line and exit 1."""


class Entry:
    """One path of the layer: a directory, a file (from the host or given bytes), a symlink."""

    def __init__(self, kind, mode=0o755, src=None, data=None, target=None):
        self.kind, self.mode, self.src, self.data, self.target = kind, mode, src, data, target

    def same(self, other):
        return (self.kind, self.mode, self.src, self.data, self.target) == (
            other.kind,
            other.mode,
            other.src,
            other.data,
            other.target,
        )


class Tree:
    """The image's file tree, by absolute path; parents are added as 0755 directories."""

    def __init__(self):
        self.entries = {"/": Entry("dir")}

    def add(self, path, entry, origin):
        path = os.path.normpath("/" + path.lstrip("/"))
        parent = os.path.dirname(path)
        if parent != path:
            if parent not in self.entries:
                self.add(parent, Entry("dir"), origin)
            elif self.entries[parent].kind != "dir":
                raise Fail(f"{origin}: {parent} is a {self.entries[parent].kind} in the image")
        old = self.entries.get(path)
        if old is None:
            self.entries[path] = entry
        elif old.kind == "dir" and entry.kind == "dir":
            if entry.mode != 0o755:
                old.mode = entry.mode
        elif not old.same(entry):
            raise Fail(f"{origin}: {path} is already in the image as something else")
        return path

    def add_host_file(self, src, dst, origin):
        """The real file behind `src` (symlinks followed), at `dst`."""
        real = os.path.realpath(src)
        try:
            st = os.stat(real)
        except OSError as e:
            raise Fail(f"{origin}: {src}: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise Fail(f"{origin}: {src} is not a regular file")
        return self.add(dst, Entry("file", stat.S_IMODE(st.st_mode), src=real), origin)

    def add_host_dir(self, src, dst, origin):
        """`src` and everything under it at `dst`; a symlink stays one when it points inside
        `src`, else the real file is stored."""
        if not os.path.isdir(src):
            raise Fail(f"{origin}: {src} is not a directory")
        src = os.path.realpath(src)
        self.add(dst, Entry("dir", stat.S_IMODE(os.stat(src).st_mode)), origin)
        for root, dirs, files in os.walk(src):
            for name in sorted(dirs + files):
                host = os.path.join(root, name)
                inside = os.path.join(dst, os.path.relpath(host, src))
                if os.path.islink(host):
                    target = os.readlink(host)
                    resolved = os.path.realpath(host)
                    if resolved.startswith(src + os.sep) and os.path.exists(resolved):
                        self.add(inside, Entry("symlink", 0o777, target=target), origin)
                    elif os.path.isfile(resolved):
                        self.add_host_file(host, inside, origin)
                    else:
                        raise Fail(f"{origin}: {host} points outside {src} at no file")
                elif os.path.isdir(host):
                    self.add(inside, Entry("dir", stat.S_IMODE(os.stat(host).st_mode)), origin)
                elif os.path.isfile(host):
                    self.add_host_file(host, inside, origin)
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]

    def add_libs(self):
        """Every shared library of every ELF file in the tree, until nothing new is needed."""
        done = set()
        while True:
            elves = [
                e.src
                for e in self.entries.values()
                if e.kind == "file" and e.src and e.src not in done and is_elf(e.src)
            ]
            if not elves:
                return
            for elf in sorted(elves):
                done.add(elf)
                for name in ldd(elf):
                    real = os.path.realpath(name)
                    self.add_host_file(real, real, f"ldd {elf}")
                    if os.path.normpath(name) != real:
                        self.add(name, Entry("symlink", 0o777, target=real), f"ldd {elf}")


def is_elf(path):
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def ldd(path):
    """The absolute paths of the libraries `path` loads (with the loader); [] when static."""
    run = subprocess.run(["ldd", path], capture_output=True, text=True)
    out = run.stdout + run.stderr
    if run.returncode != 0:
        if "not a dynamic executable" in out or "statically linked" in out:
            return []
        raise Fail(f"ldd {path}: {out.strip()}")
    libs = []
    for line in run.stdout.splitlines():
        line = line.strip()
        if "=>" in line:
            name, _, rest = line.partition("=>")
            rest = rest.strip()
            if rest.startswith("not found"):
                raise Fail(f"ldd {path}: {name.strip()} not found")
            lib = rest.split(" (")[0].strip()
            if lib.startswith("/"):
                libs.append(lib)
        elif line.startswith("/"):
            libs.append(line.split(" (")[0].strip())
        # else linux-vdso.so.1 and the like: the kernel's, not a file
    return libs


def tar_info(name, kind, mode=0o644, size=0, target=""):
    info = tarfile.TarInfo(name)
    info.type = {"dir": tarfile.DIRTYPE, "file": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE}[kind]
    info.mode, info.size, info.linkname = mode, size, target
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info


def write_layer(tree, path):
    """Writes the layer tar to `path`; returns its sha256 digest and size."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(tree.entries):
            e = tree.entries[name]
            member = name.lstrip("/")
            if not member:
                continue  # the root itself
            if e.kind == "dir":
                tar.addfile(tar_info(member, "dir", e.mode))
            elif e.kind == "symlink":
                tar.addfile(tar_info(member, "symlink", 0o777, target=e.target))
            elif e.data is not None:
                tar.addfile(tar_info(member, "file", e.mode, len(e.data)), io.BytesIO(e.data))
            else:
                with open(e.src, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    tar.addfile(tar_info(member, "file", e.mode, size), f)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest(), os.path.getsize(path)


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def descriptor(media, data):
    return {"mediaType": media, "digest": sha256(data), "size": len(data)}


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_index(archive):
    """The (full ref, manifest digest) an archive's index.json names, or None."""
    try:
        with tarfile.open(archive) as tar:
            index = json.load(tar.extractfile("index.json"))
        m = index["manifests"][0]
        return m["annotations"]["io.containerd.image.name"], m["digest"]
    except (OSError, KeyError, IndexError, ValueError, tarfile.TarError, AttributeError):
        return None


def split_pair(value, flag):
    src, sep, dst = value.partition(":")
    if not sep or not src or not dst.startswith("/"):
        raise Fail(f"{flag} {value}: expected SRC:/ABSOLUTE/DST")
    return src, dst


def build(args):
    if ":" not in args.name.rsplit("/", 1)[-1]:
        raise Fail(f"--name {args.name}: expected a full reference with a tag (localhost/x/y:dev)")
    tag = args.name.rsplit(":", 1)[1]
    tree = Tree()
    for path, mode in BASE_DIRS.items():
        tree.add(path, Entry("dir", mode), "base")
    for path, text in BASE_FILES.items():
        tree.add(path, Entry("file", 0o644, data=text.encode()), "base")
    for value in args.file:
        tree.add_host_file(*split_pair(value, "--file"), f"--file {value}")
    for value in args.dir:
        tree.add_host_dir(*split_pair(value, "--dir"), f"--dir {value}")
    for value in args.symlink:
        dst, sep, target = value.partition(":")
        if not sep or not dst.startswith("/") or not target:
            raise Fail(f"--symlink {value}: expected /ABSOLUTE/PATH:TARGET")
        tree.add(dst, Entry("symlink", 0o777, target=target), f"--symlink {value}")
    if args.libs:
        tree.add_libs()

    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    layer_path = out + ".layer.tmp"
    try:
        layer_digest, layer_size = write_layer(tree, layer_path)
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Entrypoint": args.entrypoint,
                "Env": [f"PATH={DEFAULT_PATH}"] + args.env,
                "WorkingDir": args.workdir,
            },
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "history": [{"created_by": "tests/cluster/image.py"}],
        }
        if args.cmd:
            config["config"]["Cmd"] = args.cmd
        if args.user:
            config["config"]["User"] = args.user
        config_json = canonical(config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": descriptor(MEDIA_CONFIG, config_json),
            "layers": [{"mediaType": MEDIA_LAYER, "digest": layer_digest, "size": layer_size}],
        }
        manifest_json = canonical(manifest)
        manifest_digest = sha256(manifest_json)
        if read_index(out) == (args.name, manifest_digest):
            print(f"{args.name} {manifest_digest} unchanged {out}")
            return
        entry = descriptor(MEDIA_MANIFEST, manifest_json)
        entry["platform"] = {"architecture": "amd64", "os": "linux"}
        entry["annotations"] = {
            "io.containerd.image.name": args.name,
            "org.opencontainers.image.ref.name": tag,
        }
        index_json = canonical(
            {"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [entry]}
        )
        tmp = out + ".tmp"
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for name in ["blobs", "blobs/sha256"]:
                tar.addfile(tar_info(name, "dir", 0o755))
            for name, data in [
                ("oci-layout", canonical({"imageLayoutVersion": "1.0.0"})),
                ("index.json", index_json),
                (blob(manifest_digest), manifest_json),
                (blob(sha256(config_json)), config_json),
            ]:
                tar.addfile(tar_info(name, "file", 0o644, len(data)), io.BytesIO(data))
            with open(layer_path, "rb") as f:
                tar.addfile(tar_info(blob(layer_digest), "file", 0o644, layer_size), f)
        os.replace(tmp, out)
        print(f"{args.name} {manifest_digest} written {out} ({layer_size // (1 << 20)} MiB layer)")
    finally:
        for leftover in [layer_path, out + ".tmp"]:
            if os.path.exists(leftover):
                os.remove(leftover)


def blob(digest):
    return "blobs/sha256/" + digest.split(":", 1)[1]


def main():
    p = argparse.ArgumentParser(description="Builds OCI image archives from host files.")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build one image archive")
    b.add_argument("--name", required=True, help="full reference, e.g. localhost/weft/weft:dev")
    b.add_argument("--out", required=True, help="the archive to write")
    b.add_argument("--entrypoint", nargs="+", required=True, help="the entrypoint's argv")
    b.add_argument("--cmd", nargs="*", default=[], help="the default arguments")
    b.add_argument("--env", action="append", default=[], help="K=V, after PATH")
    b.add_argument("--workdir", default="/")
    b.add_argument("--user", help="the image's user, e.g. 2102:2102")
    b.add_argument("--file", action="append", default=[], help="SRC:DST, a file")
    b.add_argument("--dir", action="append", default=[], help="SRC:DST, a directory tree")
    b.add_argument("--symlink", action="append", default=[], help="DST:TARGET")
    b.add_argument("--libs", action="store_true", help="add the shared libraries ELF files need")
    d = sub.add_parser("digest", help='print "REF DIGEST" of an archive\'s manifest')
    d.add_argument("archive")
    args = p.parse_args()
    try:
        if args.command == "build":
            build(args)
        else:
            found = read_index(args.archive)
            if found is None:
                raise Fail(f"{args.archive}: not an image archive this script wrote")
            print(*found)
    except Fail as e:
        print(f"image.py: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
