"""TF.js for the in-browser page, vendored from npm at build time (never a CDN at run time).

``make install`` runs ``npm ci`` (the versions in package.json / package-lock.json) and then
``python -m label.web_vendor node_modules label/web/vendor``, which copies the files the page
loads into ``label/web/vendor/`` (gitignored; shipped in the wheel when present).
``label_image --export_web`` copies them into the page's folder and says how to get them
when they are missing.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Optional

VENDOR_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web", "vendor")

#: file in the vendor folder -> (npm package, path inside it)
VENDOR_FILES = {
    "tf.min.js": ("@tensorflow/tfjs", "dist/tf.min.js"),
    "tf-backend-wasm.min.js": ("@tensorflow/tfjs-backend-wasm", "dist/tf-backend-wasm.min.js"),
    "tfjs-backend-wasm.wasm": ("@tensorflow/tfjs-backend-wasm", "dist/tfjs-backend-wasm.wasm"),
    "tfjs-backend-wasm-simd.wasm": ("@tensorflow/tfjs-backend-wasm", "dist/tfjs-backend-wasm-simd.wasm"),
    "tfjs-backend-wasm-threaded-simd.wasm": ("@tensorflow/tfjs-backend-wasm",
                                             "dist/tfjs-backend-wasm-threaded-simd.wasm"),
}
VERSIONS_FILE = "VERSIONS.json"  # the packages' versions and licences, written beside them
INSTALL_HINT = "run `make install` (npm ci, then python -m label.web_vendor) in the source tree"


class VendorError(RuntimeError):
    """The vendored TF.js files are missing; the message is one line."""


def missing_files(vendor_dir: str = VENDOR_DIR) -> list[str]:
    """The vendored files not present in ``vendor_dir``."""
    return [name for name in VENDOR_FILES if not os.path.isfile(os.path.join(vendor_dir, name))]


def check_vendored(vendor_dir: str = VENDOR_DIR) -> None:
    """Raise :class:`VendorError` naming what is missing and how to get it."""
    missing = missing_files(vendor_dir)
    if missing:
        raise VendorError(f"the in-browser page needs TF.js, vendored from npm at build time, and "
                          f"{vendor_dir} lacks {', '.join(missing)}: {INSTALL_HINT}")


def vendor(node_modules: str, vendor_dir: str = VENDOR_DIR) -> list[str]:
    """Copy :data:`VENDOR_FILES` from ``node_modules`` into ``vendor_dir``; returns the names."""
    versions = {}
    for name, (package, inside) in VENDOR_FILES.items():
        source = os.path.join(node_modules, package, inside)
        if not os.path.isfile(source):
            raise VendorError(f"{source} is missing: run npm ci in the source tree first")
        with open(os.path.join(node_modules, package, "package.json"), encoding="utf-8") as f:
            meta = json.load(f)
        versions[package] = {"version": meta.get("version"), "license": meta.get("license")}
    os.makedirs(vendor_dir, exist_ok=True)
    for name, (package, inside) in VENDOR_FILES.items():
        shutil.copyfile(os.path.join(node_modules, package, inside), os.path.join(vendor_dir, name))
    with open(os.path.join(vendor_dir, VERSIONS_FILE), "w", encoding="utf-8") as f:
        json.dump(versions, f, indent=1, sort_keys=True)
    return list(VENDOR_FILES)


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (1, 2):
        print("usage: python -m label.web_vendor NODE_MODULES [VENDOR_DIR]", file=sys.stderr)
        return 2
    try:
        names = vendor(argv[0], argv[1] if len(argv) > 1 else VENDOR_DIR)
    except (VendorError, OSError) as e:
        print(f"label.web_vendor: error: {e}", file=sys.stderr)
        return 1
    print(f"vendored {len(names)} TF.js files into {argv[1] if len(argv) > 1 else VENDOR_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
