"""The README's library snippet runs as written."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _snippet(name: str) -> str:
    text = README.read_text()
    m = re.search(rf"<!-- snippet: {name}\b.*?-->\s*```python\n(.*?)```", text, re.S)
    assert m, f"README has no python block marked 'snippet: {name}'"
    return m.group(1)


def test_library_snippet_runs_and_relearns(capsys):
    scope: dict = {}
    exec(compile(_snippet("library"), "README.md:library", "exec"), scope)
    dnr = scope["dnr"]
    # every=2 over epochs 0..4: D&R acted at epochs 2 and 4
    assert dnr.times_applied == 2
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[:2] for line in lines] == [["2", "audio"], ["2", "video"],
                                                      ["4", "audio"], ["4", "video"]]
    report = scope["report"]
    assert report.applied and report.n_train == 200 and report.n_val == 100


def test_relative_links_of_the_readme_and_docs_exist():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    missing = []
    for page in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code is not links
        text = re.sub(r"`[^`]*`", "", text)
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            if not (page.parent / target).exists():
                missing.append(f"{page.relative_to(root)} -> {target}")
    assert not missing, missing
