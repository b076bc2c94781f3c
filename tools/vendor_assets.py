"""Fetch the browser code the pages load (GraphiQL, React, ReactDOM) from the npm
registry and write it under leads_gql/web/static/vendor/, with each package's licence
and a manifest of hashes (leads_gql/web/static/vendor.json) that the tests check.

    python tools/vendor_assets.py            # (re)write the vendored files
    python tools/vendor_assets.py --check    # fetch again, compare with what is here

`npm pack NAME@VERSION` checks each tarball against the integrity the registry
publishes; the manifest keeps that integrity and the sha384 of every file written.
The files are copied as published, except GraphiQL's stylesheet: its `data:` URLs
(fonts, two images) become files beside it, so that the pages' Content-Security-Policy
can allow the server's own origin and nothing else.
To move to another version, change PACKAGES, run this, and run the tests.
"""

from __future__ import annotations

import argparse
import base64
import filecmp
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "leads_gql" / "web" / "static"
MANIFEST = "vendor.json"

# (package, exact version, {file in the tarball: name to write}). The UMD builds:
# they run from a <script> tag, no bundler. GraphiQL 3 is the last major release
# with one, and it carries the graphql-ws client it uses for subscriptions;
# React 18 is the last with UMD builds.
PACKAGES: list[tuple[str, str, dict[str, str]]] = [
    (
        "react",
        "18.3.1",
        {
            "umd/react.production.min.js": "react.production.min.js",
            "LICENSE": "LICENSE",
        },
    ),
    (
        "react-dom",
        "18.3.1",
        {
            "umd/react-dom.production.min.js": "react-dom.production.min.js",
            "LICENSE": "LICENSE",
        },
    ),
    (
        "graphiql",
        "3.9.0",
        {
            "graphiql.min.js": "graphiql.min.js",
            "graphiql.min.css": "graphiql.min.css",
            "LICENSE": "LICENSE",
        },
    ),
]

_DATA_URL = re.compile(
    r"url\((['\"]?)data:([a-z0-9.+/-]+);base64,([A-Za-z0-9+/=]+)\1\)"
)
_EXTENSIONS = {"font/woff": "woff", "font/woff2": "woff2", "image/png": "png"}


def sri(data: bytes, algorithm: str = "sha384") -> str:
    digest = hashlib.new(algorithm, data).digest()
    return f"{algorithm}-{base64.b64encode(digest).decode()}"


def npm_pack(spec: str, into: Path) -> tuple[Path, str]:
    """The tarball of `spec` and its registry integrity (npm has checked it)."""
    out = subprocess.run(
        ["npm", "pack", spec, "--json", "--pack-destination", str(into)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    (packed,) = json.loads(out)
    return into / packed["filename"], packed["integrity"]


def split_data_urls(css: bytes, stem: str) -> tuple[bytes, dict[str, bytes]]:
    """The stylesheet with each base64 `data:` URL replaced by a file name beside it
    (named by its content), and those files."""
    files: dict[str, bytes] = {}

    def to_file(match: re.Match[str]) -> str:
        media, payload = match.group(2), base64.b64decode(match.group(3))
        if media not in _EXTENSIONS:
            raise SystemExit(f"unexpected data: URL of type {media} in the stylesheet")
        name = f"{stem}-{hashlib.sha256(payload).hexdigest()[:16]}.{_EXTENSIONS[media]}"
        files[name] = payload
        return f"url({name})"

    text = _DATA_URL.sub(to_file, css.decode("utf-8"))
    if "data:" in text:
        raise SystemExit("a data: URL is left in the stylesheet")
    return text.encode("utf-8"), files


def build(into: Path, work: Path) -> dict[str, Any]:
    """Fetch every package and write its files under `into`/vendor; the manifest."""
    packages = []
    for name, version, wanted in PACKAGES:
        tarball, integrity = npm_pack(f"{name}@{version}", work)
        folder = f"vendor/{name}-{version}"
        (into / folder).mkdir(parents=True)
        entries = []
        with tarfile.open(tarball) as tar:
            published = json.load(_member(tar, "package.json"))
            if published["version"] != version:
                raise SystemExit(f"{name}: got {published['version']}, not {version}")
            for source, target in wanted.items():
                data = _member(tar, source).read()
                derived: dict[str, bytes] = {}
                if target.endswith(".css"):
                    data, derived = split_data_urls(data, Path(target).stem)
                for file_name, content in [(target, data), *derived.items()]:
                    (into / folder / file_name).write_bytes(content)
                    entries.append(
                        {
                            "path": f"{folder}/{file_name}",
                            "from": f"package/{source}",
                            "sha384": sri(content),
                        }
                    )
        packages.append(
            {
                "name": name,
                "version": version,
                "license": published["license"],
                "integrity": integrity,
                "files": entries,
            }
        )
    return {
        "comment": "Written by tools/vendor_assets.py; the tests check every hash.",
        "packages": packages,
    }


def _member(tar: tarfile.TarFile, name: str) -> IO[bytes]:
    handle = tar.extractfile(f"package/{name}")
    if handle is None:
        raise SystemExit(f"package/{name} is not a file in the tarball")
    return handle


def same_tree(a: Path, b: Path) -> list[str]:
    """The relative paths that differ between two trees."""
    names = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    names |= {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    return sorted(
        str(n)
        for n in names
        if not ((a / n).is_file() and (b / n).is_file())
        or not filecmp.cmp(a / n, b / n, shallow=False)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="compare with the files here, write none"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out, work = Path(tmp) / "static", Path(tmp) / "npm"
        out.mkdir()
        work.mkdir()
        manifest = build(out, work)
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if args.check:
            here = Path(tmp) / "here"
            shutil.copytree(STATIC / "vendor", here / "vendor")
            shutil.copy(STATIC / MANIFEST, here / MANIFEST)
            differ = same_tree(out, here)
            for name in differ:
                print(f"differs from the registry: {name}", file=sys.stderr)  # noqa: T201
            if not differ:
                print("the vendored files are the registry's")  # noqa: T201
            return 1 if differ else 0
        shutil.rmtree(STATIC / "vendor", ignore_errors=True)
        shutil.copytree(out / "vendor", STATIC / "vendor")
        shutil.copy(out / MANIFEST, STATIC / MANIFEST)
    for package in manifest["packages"]:
        print(f"{package['name']} {package['version']}: {len(package['files'])} files")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
