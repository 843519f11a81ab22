#!/usr/bin/env python3
"""pod-graceful-drain testbed: write a single-layer OCI image-layout *tarball* with only the stdlib (no docker, no registry).

usage: mkimage.py --name localhost/testbed/NAME:TAG --out img.tar \
         [--file SRC:DST[:MODE]]... [--dir DST[:MODE]]... [--symlink DST:TARGET]... \
         [--text DST:CONTENT[:MODE]]... [--entrypoint JSON] [--cmd JSON] [--user UID:GID] \
         [--env K=V]... [--workdir /]

Import with: ctr --address SOCK -n k8s.io images import --snapshotter overlayfs img.tar
The manifest carries io.containerd.image.name (used verbatim by ctr import) and
org.opencontainers.image.ref.name (the tag).
"""
import argparse, hashlib, io, json, os, tarfile

MTIME = 0  # fixed mtime -> reproducible digests


def add_dirs(tf, seen, path):
    parts = path.strip("/").split("/")[:-1]
    cur = ""
    for p in parts:
        cur = f"{cur}/{p}" if cur else p
        if cur not in seen:
            ti = tarfile.TarInfo(cur)
            ti.type = tarfile.DIRTYPE
            ti.mode = 0o755
            ti.mtime = MTIME
            tf.addfile(ti)
            seen.add(cur)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--file", action="append", default=[])
    ap.add_argument("--dir", action="append", default=[])
    ap.add_argument("--symlink", action="append", default=[])
    ap.add_argument("--text", action="append", default=[])
    ap.add_argument("--entrypoint")
    ap.add_argument("--cmd")
    ap.add_argument("--user")
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--workdir", default="/")
    a = ap.parse_args()
    if "/" not in a.name.split(":")[0] or ":" not in a.name.rsplit("/", 1)[-1]:
        raise SystemExit("--name must be fully qualified, e.g. localhost/testbed/x:1")
    tag = a.name.rsplit(":", 1)[1]

    # ---- layer (uncompressed tar; digest == diff_id)
    lb = io.BytesIO()
    seen = set()
    with tarfile.open(fileobj=lb, mode="w", format=tarfile.PAX_FORMAT) as tf:
        entries = []
        for d in a.dir:
            p, _, m = d.partition(":")
            entries.append(("dir", p.strip("/"), int(m, 8) if m else 0o755, None))
        for f in a.file:
            bits = f.split(":")
            src, dst = bits[0], bits[1]
            mode = int(bits[2], 8) if len(bits) > 2 else (os.stat(src).st_mode & 0o7777)
            entries.append(("file", dst.strip("/"), mode, open(src, "rb").read()))
        for t in a.text:
            dst, content = t.split(":", 1)  # mode 0644; "\n" escapes allowed
            entries.append(("file", dst.strip("/"), 0o644, content.encode().decode("unicode_escape").encode()))
        for s in a.symlink:
            dst, target = s.split(":", 1)
            entries.append(("link", dst.strip("/"), 0o777, target))
        for kind, path, mode, data in sorted(entries, key=lambda e: e[1]):
            add_dirs(tf, seen, path)
            ti = tarfile.TarInfo(path)
            ti.mtime = MTIME
            ti.uid = ti.gid = 0
            ti.mode = mode
            if kind == "dir":
                if path in seen:
                    continue
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
                seen.add(path)
            elif kind == "link":
                ti.type = tarfile.SYMTYPE
                ti.linkname = data
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    layer = lb.getvalue()
    layer_d = "sha256:" + hashlib.sha256(layer).hexdigest()

    cfg = {"Env": a.env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
           "WorkingDir": a.workdir}
    if a.entrypoint:
        cfg["Entrypoint"] = json.loads(a.entrypoint)
    if a.cmd:
        cfg["Cmd"] = json.loads(a.cmd)
    if a.user:
        cfg["User"] = a.user
    config = json.dumps({"architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
                         "config": cfg, "rootfs": {"type": "layers", "diff_ids": [layer_d]},
                         "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "mkimage.py"}]},
                        sort_keys=True, separators=(",", ":")).encode()
    config_d = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": config_d, "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                       "digest": layer_d, "size": len(layer)}]},
                          sort_keys=True, separators=(",", ":")).encode()
    manifest_d = "sha256:" + hashlib.sha256(manifest).hexdigest()
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                       "digest": manifest_d, "size": len(manifest),
                                       "annotations": {"io.containerd.image.name": a.name,
                                                       "org.opencontainers.image.ref.name": tag},
                                       "platform": {"architecture": "amd64", "os": "linux"}}]},
                       sort_keys=True, separators=(",", ":")).encode()

    with tarfile.open(a.out, "w", format=tarfile.PAX_FORMAT) as out:
        def put(name, data, mode=0o644):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), mode, MTIME
            out.addfile(ti, io.BytesIO(data))
        for d in ("blobs", "blobs/sha256"):
            ti = tarfile.TarInfo(d); ti.type = tarfile.DIRTYPE; ti.mode = 0o755; ti.mtime = MTIME
            out.addfile(ti)
        put("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        put("index.json", index)
        for d, b in ((manifest_d, manifest), (config_d, config), (layer_d, layer)):
            put("blobs/sha256/" + d.split(":")[1], b)
    print(f"{a.name} manifest={manifest_d} layer={len(layer)}B -> {a.out}")


if __name__ == "__main__":
    main()
