"""Make the text of the 16k-vocabulary trained fixture from Debian's manual-page packages.

Sources (installed with apt-get; `make fixture-16k` does it): English ``manpages`` and ``manpages-dev``
(the Linux man-pages project), German ``manpages-de``, French ``manpages-fr`` and Spanish
``manpages-es`` (the manpages-l10n translations). Every page is rendered with groff as ``man`` shows
it (UTF-8, 78 columns, no hyphenation, no bold/underline overstrikes), runs of spaces inside a line
are collapsed (groff's justification), and the translators' credits section is dropped (boilerplate
in every translated page). Each page's licence comes from its package's DEP-5 copyright file (the
last stanza whose ``Files`` pattern matches, as DEP-5 says) and is recorded in sources.json.

Splits are disjoint by page *name* across all languages: a page held out in one language is held out
in all, so no translation of a held-out page is trained on. Pages go, by the sha256 of their name,
to held-out (1 in 20), calibration (1 in 20) or training; each (language, split) is filled in sorted
page order up to a byte budget. Paragraphs are then deduplicated across everything (first occurrence
wins, training first), so no held-out or calibration paragraph occurs in the training text (checked).

    python scripts/make_fixture_text.py OUT      # OUT/train.txt, calibration.txt, heldout.{en,de,fr,es}.txt,
                                                 # sources.json (packages, versions, licences, sha256s)

Deterministic for the package versions recorded in sources.json and the installed groff.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

# language -> packages; budgets in bytes of rendered text per (language, split)
PACKAGES = {"en": ["manpages", "manpages-dev"], "de": ["manpages-de"], "fr": ["manpages-fr"], "es": ["manpages-es"]}
BUDGET = {
    "train": {"en": 2_000_000, "de": 1_500_000, "fr": 1_500_000, "es": 1_500_000},
    "calibration": dict.fromkeys(PACKAGES, 60000),
    "heldout": dict.fromkeys(PACKAGES, 60000),
}
CREDITS = re.compile(r"^(ÜBERSETZUNG|TRADUCTION|TRADUCCIÓN)\s*$", re.M)
PAGE = re.compile(r"/usr/share/man/(?:(\w\w)/)?(man\w+)/([^/]+)\.gz$")


def split_of(name: str) -> str:
    h = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big") % 20
    return "heldout" if h == 0 else "calibration" if h == 1 else "train"


def package_info(pkg: str) -> tuple[str, list[str]]:
    version = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True, check=True
    ).stdout
    files = subprocess.run(["dpkg", "-L", pkg], capture_output=True, text=True, check=True).stdout.split("\n")
    return version, sorted(f for f in files if PAGE.search(f) and Path(f).is_file() and not Path(f).is_symlink())


def copyright_stanzas(pkg: str) -> list[tuple[list[str], str]]:
    text = Path(f"/usr/share/doc/{pkg}/copyright").read_text(encoding="utf-8")
    out = []
    for stanza in re.split(r"\n\s*\n", text):
        files = re.search(r"^Files:(.*(?:\n[ \t].*)*)", stanza, re.M)
        lic = re.search(r"^License:\s*(\S.*)$", stanza, re.M)
        if files and lic:
            out.append((files.group(1).split(), lic.group(1).strip()))
    return out


def licence_of(stanzas: list[tuple[list[str], str]], lang: str, section: str, page: str) -> str:
    # English pages are listed as man2/open.2, translations by their po file: po/de/man1/ls.1.po
    cands = [f"{section}/{page}"] if lang == "en" else [f"po/{lang}/{section}/{page}.po"]
    found = "unknown"
    for patterns, lic in stanzas:
        if any(fnmatch.fnmatchcase(c, p) for c in cands for p in patterns):
            found = lic
    return found


def render(path: str) -> str:
    src = gzip.decompress(Path(path).read_bytes())
    pre = subprocess.run(["preconv", "-e", "utf-8"], input=src, capture_output=True, check=True).stdout
    out = subprocess.run(
        ["groff", "-t", "-man", "-Tutf8", "-rHY=0", "-rLL=78n", "-P-cbou"],
        input=pre,
        capture_output=True,
        check=True,
        env={"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"},
    ).stdout
    text = out.decode("utf-8", errors="replace")
    m = CREDITS.search(text)
    if m:
        text = text[: m.start()]
    text = re.sub(r"(?<=\S) {2,}(?=\S)", " ", text)  # groff's justification
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    parts: dict[str, dict[str, list[str]]] = {s: {lang: [] for lang in PACKAGES} for s in BUDGET}
    used = {s: dict.fromkeys(PACKAGES, 0) for s in BUDGET}
    sources, pages = [], []
    for lang, pkgs in PACKAGES.items():
        for pkg in pkgs:
            version, files = package_info(pkg)
            stanzas = copyright_stanzas(pkg)
            cr = Path(f"/usr/share/doc/{pkg}/copyright").read_bytes()
            sources.append(
                {
                    "package": pkg,
                    "version": version,
                    "language": lang,
                    "copyright_sha256": hashlib.sha256(cr).hexdigest(),
                    "licence_files_star": next((lic for p, lic in stanzas if p == ["*"]), "unknown"),
                }
            )
            for f in files:
                _, section, page = PAGE.search(f).groups()
                name = page.rsplit(".", 1)[0]
                split = split_of(name)
                if used[split][lang] >= BUDGET[split][lang]:
                    continue
                text = render(f)
                if len(text) < 200:  # .so redirects and stubs
                    continue
                parts[split][lang].append(text)
                used[split][lang] += len(text.encode())
                pages.append(
                    {
                        "package": pkg,
                        "page": f"{section}/{page}",
                        "split": split,
                        "language": lang,
                        "licence": licence_of(stanzas, lang, section, page),
                        "source_sha256": hashlib.sha256(Path(f).read_bytes()).hexdigest(),
                    }
                )
    seen: set[str] = set()
    files_out: dict[str, str] = {}
    for split in ("train", "calibration", "heldout"):
        for lang in PACKAGES:
            keep = []
            for doc in parts[split][lang]:
                paras = [p for p in doc.split("\n\n") if p.strip()]
                fresh = [p for p in paras if p not in seen]
                seen.update(fresh)
                if fresh:
                    keep.append("\n\n".join(fresh))
            parts[split][lang] = keep
    files_out["train.txt"] = "\n\n".join(d for lang in PACKAGES for d in parts["train"][lang]) + "\n"
    files_out["calibration.txt"] = "\n\n".join(d for lang in PACKAGES for d in parts["calibration"][lang]) + "\n"
    for lang in PACKAGES:
        files_out[f"heldout.{lang}.txt"] = "\n\n".join(parts["heldout"][lang]) + "\n"
    train_paras = set(files_out["train.txt"].split("\n\n"))
    for name, text in files_out.items():
        if name != "train.txt":
            overlap = [p for p in text.split("\n\n") if p.strip() and p in train_paras]
            assert not overlap, f"{name} shares {len(overlap)} paragraphs with train.txt"
    summary = {}
    for name, text in files_out.items():
        (out / name).write_text(text, encoding="utf-8")
        data = text.encode()
        summary[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    bytes_per_lang = {s: {lang: sum(len(d.encode()) for d in parts[s][lang]) for lang in PACKAGES} for s in parts}
    (out / "sources.json").write_text(
        json.dumps(
            {
                "made_by": "scripts/make_fixture_text.py",
                "packages": sources,
                "files": summary,
                "bytes_per_language": bytes_per_lang,
                "pages": pages,
            },
            indent=1,
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )
    for name, s in summary.items():
        print(f"{name:20s} {s['bytes']:>9,d} bytes  {s['sha256'][:16]}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_fixture_text.py OUT_DIR")
    main(Path(sys.argv[1]))
