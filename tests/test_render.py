"""ui/render.py: every user-provided string (ids, labels, paths, reasons) is printed literally (issue 19, rule 5):
`[/x]` raises no MarkupError, `[b]` does not vanish, in extract's summary, info, verify and compact."""
from pathlib import Path

from conftest import index_frames
from helpers import extract_flags, invoke

from data.synth import write_video

SETTINGS = extract_flags(every=2)


def test_ids_labels_and_paths_with_markup_are_printed_literally(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # short relative paths: a table title wraps at the console's 80 columns
    write_video(tmp_path / "good.mp4", index_frames(4, 32, 32))
    (tmp_path / "bad.mp4").write_bytes(b"not a video [/x]")
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,path,label\n[b]good[/x],good.mp4,[b]cls[/x]\nbad[b]x[/b],bad.mp4,[i]other\n")
    store = Path("st[/x]ore")
    res = invoke("extract", manifest, *SETTINGS, "--store", store)
    assert res.exit_code == 2, res.output  # one item failed: not 1 (a MarkupError), not a traceback
    assert "bad[b]x[/b]" in res.output and f"extract → {store}" in res.output
    for args in (["info", store], ["verify", store]):
        res = invoke(*args)
        assert res.exit_code == 0 and str(store) in res.output, res.output
    assert "bad[b]x[/b]" in invoke("info", store).output
    res = invoke("compact", store, "[b]one.h5")
    assert res.exit_code == 0 and "[b]one.h5" in res.output
