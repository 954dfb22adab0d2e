"""Write plot_templates/page.html, the `dvc plots show` / `dvc plots diff` page template, with Vega inside it.

    python -m tools.vega_page [--from DIR]

DVC's own page loads Vega, Vega-Lite and vega-embed from a CDN, so offline it draws no chart. This page carries
the three minified scripts inline (from their npm packages, at the versions below): the page DVC writes then
opens anywhere, offline, whatever `-o` folder it was written to. `.dvc/config` names it (`plots.html_template`).
The page's HTML is edited in page.html itself: this tool replaces only the scripts, from the first script's
comment to the page's `</head>`. The licence of each package goes to plot_templates/vega/. `--from` takes a
folder already holding the npm tarballs (`npm pack vega@5.33.1 ...`); without it, `npm pack` fetches them from
the registry.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "plot_templates" / "page.html"
LICENSES = ROOT / "plot_templates" / "vega"
VEGA = {"vega": "5.33.1", "vega-lite": "5.23.0", "vega-embed": "6.29.0"}  # the majors DVC's page is written for

# The inline scripts run from the comment above the first one to the page's (last) </head>: vega-embed's script
# writes a "</head>" of its own.
SCRIPTS_START = "    <!-- vega "


def package_files(tarball: Path, name: str) -> tuple[str, str | None]:
    """(the minified browser build, the LICENSE text or None) of one npm package tarball."""
    with tarfile.open(tarball) as tar:
        script = tar.extractfile(f"package/build/{name}.min.js")
        if script is None:
            raise SystemExit(f"{tarball} has no package/build/{name}.min.js")
        try:
            license_file = tar.extractfile("package/LICENSE")
        except KeyError:
            license_file = None
        meta = json.load(tar.extractfile("package/package.json"))
        if meta.get("version") != VEGA[name]:
            raise SystemExit(f"{tarball} is {name} {meta.get('version')}, not {VEGA[name]}")
        text = script.read().decode("utf-8")
        # the source map is not shipped: drop the comment that points at it
        lines = [line for line in text.splitlines() if not line.startswith("//# sourceMappingURL=")]
        lic = license_file.read().decode("utf-8") if license_file else None
        return "\n".join(lines), lic or (
            f"{name} {VEGA[name]} declares the licence {meta.get('license')} in its package.json; its npm package "
            "ships no licence file. The licence of the vega repository is the University of Washington Interactive "
            "Data Lab's BSD-3-Clause, the same text as LICENSE-vega-lite here.\n"
        )


def page(template: str, scripts: dict[str, str]) -> str:
    """The page template (DVC's placeholders around the inline scripts) with each script of `scripts` inline in
    place of the ones it had. DVC replaces `{scripts}`, `{plot_divs}` and `{refresh_tag}` anywhere in the text, so
    a script holding one of them would be corrupted: refused."""
    for name, text in scripts.items():
        if any(p in text for p in ("{scripts}", "{plot_divs}", "{refresh_tag}")):
            raise SystemExit(f"{name}.min.js holds one of DVC's placeholders: it cannot be inlined")
        if "</script" in text.lower():
            raise SystemExit(f"{name}.min.js holds '</script': it cannot be inlined")
    body = "".join(
        f"    <!-- {name} {VEGA[name]} (npm), BSD-3-Clause: plot_templates/vega/LICENSE-{name} -->\n"
        f"    <script>{text}</script>\n"
        for name, text in scripts.items()
    )
    if SCRIPTS_START not in template or "</head>" not in template:
        raise SystemExit(f"{PAGE} has no inline scripts ({SCRIPTS_START.strip()} ... </head>): restore it from git")
    return template[: template.index(SCRIPTS_START)] + body + template[template.rindex("</head>") :]


def main(argv: list[str] | None = None) -> int:
    """Fetch (or read) the three packages and write the page and the licences."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="source", type=Path, help="a folder holding the npm tarballs")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        source = args.source or Path(tmp)
        scripts, licenses = {}, {}
        for name, version in VEGA.items():
            tarball = source / f"{name}-{version}.tgz"
            if not tarball.is_file():
                cmd = ["npm", "pack", f"{name}@{version}", "--pack-destination", str(source)]
                subprocess.run(cmd, check=True, capture_output=True)
            scripts[name], licenses[name] = package_files(tarball, name)
    PAGE.write_text(page(PAGE.read_text(encoding="utf-8"), scripts), encoding="utf-8")
    LICENSES.mkdir(exist_ok=True)
    for name, text in licenses.items():
        (LICENSES / f"LICENSE-{name}").write_text(text, encoding="utf-8")
    print(f"wrote {PAGE.relative_to(ROOT)} ({PAGE.stat().st_size:,} bytes) and {LICENSES.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
