"""A zoo of catalogue CSVs (built here as strings) and of image archive layouts.

Structural problems must raise ``CsvError`` naming the file and the line or column; row problems
must keep the row with a reason that says what and where.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from museum_typology.catalogue import CsvError, InputRow, decode_csv_bytes, parse_catalogue_csv, reject_duplicates
from museum_typology.image_source import build_index, guid_of, is_junk, unsafe_member_reason
from museum_typology.schema import CLASSES

LABEL = CLASSES[0]
OTHER_LABEL = CLASSES[-1]
HEADER = "guid,description,typology\n"


def parse(text: str, source_file: str = "train.csv", labelled: bool = True) -> list[InputRow]:
    return parse_catalogue_csv(text, source_file, "train", labelled=labelled)


def accepted(rows: list[InputRow]) -> list[InputRow]:
    return [row for row in rows if row.rejected_reason is None]


# ---------------------------------------------------------------- structure


def test_plain_file_parses_with_provenance() -> None:
    rows = parse(HEADER + f"a1,Монета,{LABEL}\na2,  Ваза  ,{OTHER_LABEL}\n")
    assert [(r.guid, r.description, r.typology, r.source_row, r.source_line) for r in rows] == [
        ("a1", "Монета", LABEL, 1, 2),
        ("a2", "Ваза", OTHER_LABEL, 2, 3),
    ]
    assert all(r.rejected_reason is None and r.split == "train" and r.source_file == "train.csv" for r in rows)


def test_missing_column_names_file_and_column() -> None:
    with pytest.raises(CsvError) as caught:
        parse("guid,description\na1,x\n", "train_images.csv")
    message = str(caught.value)
    assert "train_images.csv" in message and "typology" in message
    assert "guid, description" in message  # what was found, to spot a wrong delimiter


def test_semicolon_delimited_file_is_a_missing_column_error() -> None:
    with pytest.raises(CsvError, match="missing column"):
        parse(f"guid;description;typology\na1;x;{LABEL}\n")


def test_bom_before_header_is_ignored() -> None:
    for text in ("\ufeff" + HEADER + f"a1,x,{LABEL}\n", decode_csv_bytes(("\ufeff" + HEADER + f"a1,x,{LABEL}\n").encode(), "f.csv")):
        rows = parse(text)
        assert len(rows) == 1 and rows[0].guid == "a1" and rows[0].rejected_reason is None


def test_header_is_case_and_space_insensitive_and_column_order_free() -> None:
    rows = parse(f" Typology , GUID ,Description\n{LABEL},a1,x\n")
    assert (rows[0].guid, rows[0].description, rows[0].typology, rows[0].rejected_reason) == ("a1", "x", LABEL, None)


def test_quoted_newlines_stay_one_row_with_right_lines() -> None:
    text = HEADER + f'a1,"Ваза.\nРоспись,\r\n""кобальт""",{LABEL}\na2,short,{LABEL}\n'
    rows = parse(text)
    assert len(rows) == 2
    assert rows[0].description == 'Ваза.\nРоспись,\r\n"кобальт"'
    assert (rows[0].source_row, rows[0].source_line) == (1, 2)
    # The first row spans physical lines 2-4, so the second starts on line 5.
    assert (rows[1].guid, rows[1].source_row, rows[1].source_line) == ("a2", 2, 5)


def test_blank_lines_are_skipped_but_counted_for_lines() -> None:
    rows = parse(HEADER + f"\na1,x,{LABEL}\n\n   \n\t\r\na2,y,{LABEL}\n\n")
    assert [(r.guid, r.source_row, r.source_line) for r in rows] == [("a1", 1, 3), ("a2", 2, 7)]


@pytest.mark.parametrize("record", [",,", " , , "])
def test_a_record_of_empty_fields_is_a_rejected_row_not_a_blank_line(record: str) -> None:
    # It is a row (with separators), so it must reach the manifest and keep the numbering.
    rows = parse(HEADER + f"a1,x,{LABEL}\n{record}\na2,y,{LABEL}\n")
    assert [(r.guid, r.source_row, r.source_line) for r in rows] == [("a1", 1, 2), (None, 2, 3), ("a2", 3, 4)]
    assert rows[1].rejected_reason == "train.csv row 2 (line 3): empty guid"
    assert rows[0].rejected_reason is None and rows[2].rejected_reason is None


def test_description_over_the_csv_module_field_limit_is_read() -> None:
    # Python's csv refuses fields over 131072 characters by default: one such description
    # used to make the whole file a CsvError.
    long = "Ваза. " * 40_000  # 240000 characters
    rows = parse(HEADER + f'a1,"{long}",{LABEL}\na2,{long},{LABEL}\na3,short,{LABEL}\n')
    assert [(r.guid, r.rejected_reason, r.source_line) for r in rows] == [("a1", None, 2), ("a2", None, 3), ("a3", None, 4)]
    assert rows[0].description == rows[1].description == long.strip()


def test_empty_file_is_an_error() -> None:
    for text in ("", "\ufeff"):
        with pytest.raises(CsvError, match=r"test\.csv: the file is empty"):
            parse(text, "test.csv")


def test_header_only_file_has_no_rows() -> None:
    assert parse(HEADER) == []


def test_a_column_named_twice_is_an_error_not_a_guess() -> None:
    """Read from the first of two "description" columns, a row whose text is in the second was
    scored as having none; which one holds the data cannot be known, so the file is refused."""
    for header in ("guid,description,description\n", "guid,Description,description \n"):
        with pytest.raises(CsvError, match=r"test\.csv, line 1: column\(s\) description appear more than once"):
            parse(header + "r1,,Монета\n", "test.csv", labelled=False)
    # columns the parser never reads may repeat: a spreadsheet's trailing unnamed ones, notes
    rows = parse("guid,description,note,note,,\nr1,Монета,a,b,,\n", "test.csv", labelled=False)
    assert [(r.guid, r.description, r.rejected_reason) for r in rows] == [("r1", "Монета", None)]


def test_unterminated_quote_names_the_line() -> None:
    with pytest.raises(CsvError, match=r"train\.csv, line 3: malformed CSV"):
        parse(HEADER + f"a1,x,{LABEL}\na2,\"open quote,{LABEL}\nmore\n")


def test_non_utf8_bytes_name_the_line() -> None:
    raw = (HEADER + f"a1,x,{LABEL}\n").encode() + "a2,Ваза,x\n".encode("cp1251")
    with pytest.raises(CsvError, match=r"train\.csv, line 3: not UTF-8"):
        decode_csv_bytes(raw, "train.csv")


def test_non_utf8_line_is_right_after_a_bom() -> None:
    # The utf-8-sig codec counts offsets after the BOM: the error must still point at line 2.
    raw = b"\xef\xbb\xbf" + b"g\n\xff\n"
    with pytest.raises(CsvError, match=r"f\.csv, line 2: not UTF-8 text \(byte 5"):
        decode_csv_bytes(raw, "f.csv")


def test_utf8_decodes_and_strips_bom() -> None:
    assert decode_csv_bytes("\ufeffguid\nё\n".encode(), "f.csv") == "guid\nё\n"
    assert decode_csv_bytes("guid\nё\n".encode(), "f.csv") == "guid\nё\n"


# ---------------------------------------------------------------- row problems: kept, with a reason


def test_unknown_label_is_rejected_naming_the_label() -> None:
    rows = parse(HEADER + f"a1,x,{LABEL}\na2,y,картины\n")
    assert rows[0].rejected_reason is None
    assert "картины" in rows[1].rejected_reason and "row 2 (line 3)" in rows[1].rejected_reason


def test_empty_guid_and_empty_label_are_rejected() -> None:
    rows = parse(HEADER + f" ,x,{LABEL}\na2,y,\n")
    assert rows[0].guid is None and "empty guid" in rows[0].rejected_reason
    assert "empty typology" in rows[1].rejected_reason


@pytest.mark.parametrize("guid", ["a\x00b", "a\tb", "a\x7fb"])
def test_a_guid_with_a_control_character_is_rejected(guid: str) -> None:
    # pandas cuts a field at NUL: evaluate and submission would have seen the guid "a".
    rows = parse(HEADER + f'"{guid}",x,{LABEL}\nok,y,{LABEL}\n')
    assert rows[0].rejected_reason == f"train.csv row 1 (line 2): guid {guid!r} holds a control character"
    assert rows[1].rejected_reason is None


@pytest.mark.parametrize(("line", "count"), [(f"a1,x,{LABEL},extra", 4), ("a1,x", 2)])
def test_wrong_field_count_is_rejected(line: str, count: int) -> None:
    rows = parse(HEADER + line + "\n")
    assert len(rows) == 1 and rows[0].guid == "a1"
    assert f"{count} fields, header has 3" in rows[0].rejected_reason
    assert "train.csv row 1 (line 2)" in rows[0].rejected_reason


def test_unlabelled_file_keeps_typology_none() -> None:
    rows = parse(HEADER + "t1,x,\nt2,y,\nt3,z,some stray text\n", "test.csv", labelled=False)
    assert [r.guid for r in accepted(rows)] == ["t1", "t2", "t3"]  # the unused column can't reject rows
    assert all(r.typology is None for r in rows)


def test_unlabelled_file_may_lack_the_typology_column() -> None:
    # The columns required by default follow ``labelled``; ingest passes the same ones
    # (tests/test_ingest.py checks that path).
    rows = parse_catalogue_csv("guid,description\nt1,x\n", "test.csv", "test", labelled=False)
    assert (rows[0].guid, rows[0].typology, rows[0].rejected_reason) == ("t1", None, None)
    with pytest.raises(CsvError, match=r"test\.csv: missing column\(s\) description"):
        parse_catalogue_csv("guid,typology\nt1,\n", "test.csv", "test", labelled=False)


def test_duplicate_guid_within_a_file_rejects_the_later_row() -> None:
    rows = reject_duplicates(parse(HEADER + f"a1,x,{LABEL}\na2,y,{LABEL}\na1,z,{OTHER_LABEL}\n"))
    assert [r.rejected_reason is None for r in rows] == [True, True, False]
    reason = rows[2].rejected_reason
    assert "duplicate guid a1" in reason and "first seen in train.csv row 1" in reason
    assert rows[2].description == "z"  # the rejected row keeps its data for the manifest


def test_duplicate_guid_across_files_points_at_the_first_file() -> None:
    train = parse(HEADER + f"a1,x,{LABEL}\n", "train.csv")
    images = parse(HEADER + f"b1,y,{LABEL}\na1,z,{LABEL}\n", "train_images.csv")
    rows = reject_duplicates(train + images)
    assert rows[0].rejected_reason is None and rows[1].rejected_reason is None
    assert "train_images.csv row 2" in rows[2].rejected_reason
    assert "first seen in train.csv row 1 (line 2)" in rows[2].rejected_reason


def test_an_already_rejected_row_does_not_claim_its_guid() -> None:
    rows = reject_duplicates(parse(HEADER + f"a1,x,bogus\na1,y,{LABEL}\n"))
    assert "bogus" in rows[0].rejected_reason
    assert rows[1].rejected_reason is None


# ---------------------------------------------------------------- image archive names


GUID = "c84c547b-c5c5-45cf-9199-736df1301124"


@pytest.mark.parametrize(
    ("member", "guid"),
    [
        (f"images/{GUID}.jpg", GUID),
        (f"images/{GUID}", GUID),
        (f"{GUID}.png", GUID),
        ("abc-123", "abc-123"),
        ("u1.JPG", "u1"),
        ("u1.Jpeg", "u1"),
        ("u1.webp", "u1"),
        # A guid may contain dots: only one trailing image extension is stripped (was cut at the first dot).
        ("images/inv.1.jpg", "inv.1"),
        ("images/inv.1", "inv.1"),
        ("inv.1.jpg.png", "inv.1.jpg"),
        # Any other suffix of 1-5 Latin letters is cut too (the content decides the format); one
        # with a digit (museum part numbers: 2a) or a Cyrillic letter, or an empty one, is part of
        # the guid.
        ("x-1.weird", "x-1"),
        ("z.tar.gz", "z.tar"),
        ("inv.12", "inv.12"),
        ("inv.1.2a", "inv.1.2a"),
        ("1999.12.3b", "1999.12.3b"),
        ("КП.123а", "КП.123а"),
        ("inv.1.2a.jpg", "inv.1.2a"),
        ("abc.toolongext", "abc.toolongext"),
        ("u1.", "u1."),
    ],
)
def test_guid_of(member: str, guid: str) -> None:
    assert guid_of(member) == guid


def test_a_backslash_separates_folders_in_a_zip_archive_only() -> None:
    """Windows archivers wrote ``a\\b\\<guid>.JPG``; in a directory (local or S3) a backslash is
    part of a file's name: the file ``a\\b.jpg`` there is row ``a\\b``'s image, not row ``b``'s."""
    from museum_typology.image_source import images_by_guid

    assert guid_of(f"a\\b\\{GUID}.JPG", zip_member=True) == GUID
    assert guid_of("a\\b.jpg") == "a\\b" and guid_of("a\\b.jpg", {"b"}) == "a\\b"
    assert images_by_guid(["a\\b.jpg", "b.png"], {"a\\b", "b"}) == {"a\\b": ["a\\b.jpg"], "b": ["b.png"]}
    assert images_by_guid(["x\\b.png"], {"b"}, zip_member=True) == {"b": ["x\\b.png"]}
    assert is_junk("x\\.hidden.jpg", zip_member=True) and not is_junk("x\\.hidden.jpg")


@pytest.mark.parametrize(
    ("member", "known", "guid"),
    [
        # A guid ending in a dot and Latin letters: the rows tell it from an extension (it was
        # always cut: MS.A had to be stored as MS.A.jpg to find its image).
        ("images/MS.A", {"MS.A"}, "MS.A"),
        ("images/MS.A", {"MS", "MS.A"}, "MS.A"),
        ("images/MS.A", {"MS"}, "MS"),
        ("images/MS.A.jpg", {"MS.A"}, "MS.A"),
        ("u1.jpg", {"u1"}, "u1"),
        ("u1.jpg", {"u1", "u1.jpg"}, "u1.jpg"),
    ],
)
def test_guid_of_a_file_named_exactly_as_a_known_guid(member: str, known: set[str], guid: str) -> None:
    assert guid_of(member, known) == guid


def test_a_file_named_exactly_as_a_known_guid_is_indexed_even_with_a_sidecar_extension() -> None:
    from museum_typology.image_source import images_by_guid

    names = ["images/KP.THM", "images/u1.jpg", "images/u1.xmp"]
    assert images_by_guid(names) == {"u1": ["images/u1.jpg"]}
    assert images_by_guid(names, {"KP.THM", "u1"}) == {"KP.THM": ["images/KP.THM"], "u1": ["images/u1.jpg"]}


SIDECARS = ["u1.xmp", "u1.JSON", "u1.txt", "u1.xml", "u1.csv", "u1.jpg.md5", "u1.THM", "Thumbs.db", "desktop.ini"]


@pytest.mark.parametrize("name", SIDECARS)
def test_sidecar_files_are_junk(name: str) -> None:
    assert is_junk(f"images/{name}")


@pytest.mark.parametrize("name", ["u1.jpg", "u1", "inv.1", "z.tar.gz", "u1.heic"])
def test_images_and_unknown_names_are_not_junk(name: str) -> None:
    assert not is_junk(f"images/{name}")


def test_build_index_on_a_zip_skips_sidecars_and_keeps_dotted_guids(tmp_path: Path) -> None:
    # A sidecar made u1 "ambiguous" (2 files) and the item lost its image; inv.1.jpg was guid "inv".
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("images/u1.jpg", b"jpeg")
        for name in SIDECARS:
            zf.writestr(f"images/{name}", b"metadata")
        zf.writestr("images/inv.1.jpg", b"jpeg")
        zf.writestr("images/inv.2", b"no extension")
        zf.writestr("images/U2.PNG", b"png")
    index = build_index(str(archive))
    assert index.members == {"u1": ["images/u1.jpg"], "inv.1": ["images/inv.1.jpg"], "inv.2": ["images/inv.2"], "U2": ["images/U2.PNG"]}
    assert index.unsafe == {}


def test_files_under_a_hidden_folder_are_never_images(tmp_path: Path) -> None:
    """A NAS's .AppleDouble/u1 (a resource fork named like the image), a .Trash or .thumbnails
    copy made u1 "ambiguous", and the row lost its only image; a known guid's name does not let
    them in either."""
    from museum_typology.image_source import images_by_guid

    names = ["images/u1", "images/.AppleDouble/u1", ".Trash-1000/files/u1.jpg", "images/.thumbnails/u1.jpg", "./images/u2.jpg"]
    assert images_by_guid(names) == {"u1": ["images/u1"], "u2": ["./images/u2.jpg"]}
    assert images_by_guid(names, {"u1", "u2"}) == {"u1": ["images/u1"], "u2": ["./images/u2.jpg"]}
    root = tmp_path / "images"
    (root / ".AppleDouble").mkdir(parents=True)
    (root / "u1.jpg").write_bytes(b"x")
    (root / ".AppleDouble" / "u1.jpg").write_bytes(b"fork")
    assert build_index(str(root)).members == {"u1": ["u1.jpg"]}


def _zip_with_raw_names(path: Path, names: dict[bytes, bytes]) -> None:
    """A zip whose member names are the given bytes without the UTF-8 flag, as Info-ZIP on Linux
    (UTF-8 bytes) and Windows' archivers (cp866) write them; zipfile itself always sets the flag
    on a non-ASCII name, so ASCII stand-ins of the same length are swapped for the bytes."""
    stand_ins = {raw: f"images/{index:0{len(raw) - 11}d}.jpg".encode() for index, raw in enumerate(names)}
    with zipfile.ZipFile(path, "w") as zf:
        for raw, content in names.items():
            zf.writestr(stand_ins[raw].decode(), content)
    blob = path.read_bytes()
    for raw, stand_in in stand_ins.items():
        assert len(stand_in) == len(raw) and blob.count(stand_in) == 2  # the local header and the central directory
        blob = blob.replace(stand_in, raw)
    path.write_bytes(blob)


def test_zip_names_without_the_utf8_flag_are_read_in_their_archivers_encoding(tmp_path: Path) -> None:
    """zipfile reads such names as cp437: "книга1" written by Info-ZIP came out "╨║╨╜╨╕╨│╨░1", by
    Windows "¬¡¿úá1", and the rows got no image (a plain no_image, the image an orphan)."""
    from museum_typology.image_source import ImageReader, known_guids

    archive = tmp_path / "images.zip"
    names = {
        "images/книга1.jpg".encode(): b"utf8",  # Info-ZIP on Linux
        "images/книга2.jpg".encode("cp866"): b"oem",  # Windows' compressed folder, 7-Zip
        "images/книга3.jpg".encode("cp1251"): b"ansi",  # read as cp1251 only because row книга3 is there
        "images/книга4.jpg".encode("cp1251"): b"no row",  # not UTF-8 and no row: cp866, as Windows writes
        "images/café.jpg".encode("cp437"): b"western",  # the format's own cp437, as a Western archiver writes it
    }
    _zip_with_raw_names(archive, names)
    rows = [InputRow(guid=g, split="train", source_file="t.csv", source_row=n, source_line=n + 1, description="x", typology=CLASSES[0]) for n, g in enumerate(["книга1", "книга2", "книга3", "café"], 1)]
    index = build_index(str(archive), known_guids=known_guids(rows))
    assert sorted(index.members) == sorted(["книга1", "книга2", "книга3", "книга4".encode("cp1251").decode("cp866"), "café"])
    with ImageReader(index.location, index.kind, None, 1000) as reader:  # read by the archive's own names
        assert [reader.read(index.members[g][0])[0] for g in ("книга1", "книга2", "книга3")] == [b"utf8", b"oem", b"ansi"]
    with zipfile.ZipFile(tmp_path / "flagged.zip", "w") as zf:  # with the flag (or ASCII): as written
        zf.writestr("images/книга1.jpg", b"x")
        zf.writestr("images/u1.jpg", b"x")
    assert build_index(str(tmp_path / "flagged.zip"), known_guids=known_guids(rows)).members == {"книга1": ["images/книга1.jpg"], "u1": ["images/u1.jpg"]}


def test_a_file_name_in_another_unicode_form_is_its_rows_image(tmp_path: Path) -> None:
    """macOS writes names decomposed (NFD): "йод1.jpg" looked the same as row "йод1" but did not
    match, so the row had no image and the image was an orphan."""
    import unicodedata

    from museum_typology.image_source import images_by_guid, known_guids

    decomposed = unicodedata.normalize("NFD", "йод1")
    assert decomposed != "йод1"
    rows = [InputRow(guid=g, split="train", source_file="t.csv", source_row=1, source_line=2, description="x", typology=CLASSES[0]) for g in ("йод1", "MS.Й")]
    root = tmp_path / "images"
    root.mkdir()
    (root / f"{decomposed}.jpg").write_bytes(b"x")
    (root / unicodedata.normalize("NFD", "MS.Й")).write_bytes(b"x")  # a whole name that is a guid in another form
    index = build_index(str(root), known_guids=known_guids(rows))
    assert index.members == {"йод1": [f"{decomposed}.jpg"], "MS.Й": [unicodedata.normalize("NFD", "MS.Й")]}  # the rows' spelling, the file's own name
    assert images_by_guid([f"{decomposed}.jpg"], {"йод1"}) == {decomposed: [f"{decomposed}.jpg"]}  # a plain set: exact names only
    # Beside a file spelled exactly as the row (a folder re-copied from macOS), the other form
    # stays apart: not "ambiguous: йод1.jpg, йод1.jpg". Two other-form files are ambiguous.
    both = images_by_guid(["йод1.jpg", f"{decomposed}.jpg"], known_guids(rows))
    assert both == {"йод1": ["йод1.jpg"], decomposed: [f"{decomposed}.jpg"]}
    assert images_by_guid([f"{decomposed}.jpg", f"{decomposed}.png"], known_guids(rows)) == {"йод1": [f"{decomposed}.jpg", f"{decomposed}.png"]}


def test_build_index_on_a_directory_skips_sidecars_and_keeps_dotted_guids(tmp_path: Path) -> None:
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    (root / "u1.jpg").write_bytes(b"x")
    for name in SIDECARS:
        (root / name).write_bytes(b"x")
    (root / "sub" / "inv.1.JPG").write_bytes(b"x")
    (root / "inv.2").write_bytes(b"x")
    index = build_index(str(root))
    assert index.members == {"u1": ["u1.jpg"], "inv.1": ["sub/inv.1.JPG"], "inv.2": ["inv.2"]}


@pytest.mark.parametrize(
    ("member", "phrase"),
    [("../evil.jpg", "'..'"), ("images/../../evil.jpg", "'..'"), ("..\\evil.jpg", "'..'"), ("/abs.png", "absolute"), ("C:\\x.png", "absolute")],
)
def test_unsafe_member_reason(member: str, phrase: str) -> None:
    reason = unsafe_member_reason(member)
    assert reason is not None and phrase in reason and repr(member) in reason


@pytest.mark.parametrize("member", [f"images/{GUID}.jpg", "images/a..b.jpg", "images/x:y.jpg", "a/./b.png"])
def test_safe_member_names(member: str) -> None:
    assert unsafe_member_reason(member) is None


def test_build_index_on_a_zip(tmp_path: Path) -> None:
    archive = tmp_path / "images.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("images/", b"")  # a directory entry
        zf.writestr(f"images/{GUID}.jpg", b"jpeg")
        zf.writestr("images/g2", b"no extension")
        zf.writestr("images/g3.png", b"png")
        zf.writestr("images/g3.jpg", b"same guid twice")
        zf.writestr("../evil.jpg", b"x")
        zf.writestr("/abs.png", b"x")
        zf.writestr(f"__MACOSX/images/._{GUID}.jpg", b"resource fork")
    index = build_index(str(archive))
    assert index.kind == "zip" and index.location == str(archive)
    assert index.members == {GUID: [f"images/{GUID}.jpg"], "g2": ["images/g2"], "g3": ["images/g3.jpg", "images/g3.png"]}
    assert set(index.unsafe) == {"../evil.jpg", "/abs.png"}
    assert "'..'" in index.unsafe["../evil.jpg"] and "absolute" in index.unsafe["/abs.png"]


def test_build_index_on_a_directory(tmp_path: Path) -> None:
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    (root / f"{GUID}.jpg").write_bytes(b"x")
    (root / "g2").write_bytes(b"x")
    (root / "sub" / "g3.webp").write_bytes(b"x")
    (root / ".DS_Store").write_bytes(b"x")
    index = build_index(str(root))
    assert index.kind == "dir" and index.unsafe == {}
    assert index.members == {GUID: [f"{GUID}.jpg"], "g2": ["g2"], "g3": ["sub/g3.webp"]}


def test_an_index_fingerprint_changes_with_any_image_file_and_not_with_junk(tmp_path: Path) -> None:
    """The fingerprint stands for the images' bytes without reading them: a zip member's CRC-32,
    a file's size and last change (the status-change time too, which tools that restore dates
    cannot set back)."""
    import os
    import time

    def zipped(name: str, payload: bytes) -> str:
        with zipfile.ZipFile(tmp_path / name, "w") as archive:
            archive.writestr("images/a.jpg", payload)
            archive.writestr("images/b.jpg", b"bbbb")
        return build_index(str(tmp_path / name)).fingerprint

    assert zipped("one.zip", b"aaaa") == zipped("two.zip", b"aaaa")  # the same members: the same
    assert zipped("three.zip", b"aaab") != zipped("one.zip", b"aaaa")  # same names and sizes, other bytes

    root = tmp_path / "dir"
    root.mkdir()
    (root / "a.jpg").write_bytes(b"aaaa")
    first = build_index(str(root)).fingerprint
    assert first.startswith("dir:") and build_index(str(root)).fingerprint == first
    (root / ".DS_Store").write_bytes(b"finder")
    (root / "a.xmp").write_bytes(b"<x/>")
    assert build_index(str(root)).fingerprint == first  # junk is not an image
    before = (root / "a.jpg").stat()
    time.sleep(0.01)
    (root / "a.jpg").write_bytes(b"aaab")
    os.utime(root / "a.jpg", ns=(before.st_atime_ns, before.st_mtime_ns))  # as cp -p / exiftool -P leave it
    assert build_index(str(root)).fingerprint != first


def test_build_index_refuses_a_file_that_is_not_a_zip(tmp_path: Path) -> None:
    from museum_typology.storage import StorageError

    bogus = tmp_path / "images.zip"
    bogus.write_bytes(b"<html>not a zip</html>")
    with pytest.raises(StorageError, match="not a zip archive"):
        build_index(str(bogus))
