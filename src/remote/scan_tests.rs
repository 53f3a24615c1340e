use super::*;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use proptest::collection::vec;
use proptest::prelude::*;
use std::cell::Cell;
use std::rc::Rc;

// ---------------------------------------------------------------------------
// Helpers

#[derive(Default)]
struct VecTarget {
    begins: Vec<Meta>,
    fail_write_after: Option<usize>,
    written: usize,
}

impl ContentTarget for VecTarget {
    type Out = Vec<u8>;
    fn begin(&mut self, meta: &Meta) -> io::Result<Vec<u8>> {
        self.begins.push(meta.clone());
        Ok(Vec::new())
    }
    fn write(&mut self, out: &mut Vec<u8>, decoded: &[u8]) -> io::Result<()> {
        self.written += decoded.len();
        if self
            .fail_write_after
            .is_some_and(|limit| self.written > limit)
        {
            return Err(io::Error::other("disk full"));
        }
        out.extend_from_slice(decoded);
        Ok(())
    }
}

fn tmp_spool() -> io::Result<File> {
    tempfile::tempfile()
}

fn no_spool() -> io::Result<File> {
    panic!("spool file not expected here")
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn one(body: &str) -> Result<EntryOutcome<Vec<u8>>, ScanError> {
    read_file_object(body.as_bytes(), &mut VecTarget::default(), tmp_spool)
}

fn export(body: &str) -> Result<Vec<EntryOutcome<Vec<u8>>>, ScanError> {
    let mut v = Vec::new();
    read_export(body.as_bytes(), &mut VecTarget::default(), tmp_spool, |o| {
        v.push(o);
        ControlFlow::Continue(())
    })?;
    Ok(v)
}

#[track_caller]
fn ok_bytes(o: EntryOutcome<Vec<u8>>) -> Vec<u8> {
    match o {
        EntryOutcome::Ok { out, decoded, .. } => {
            assert_eq!(decoded.sha256, sha(&out));
            assert_eq!(decoded.size, out.len() as u64);
            out
        }
        EntryOutcome::Bad { reason, .. } => panic!("unexpected Bad: {reason}"),
    }
}

#[track_caller]
fn bad_reason(o: EntryOutcome<Vec<u8>>) -> String {
    match o {
        EntryOutcome::Ok { meta, .. } => panic!("unexpected Ok: {meta:?}"),
        EntryOutcome::Bad { reason, .. } => reason,
    }
}

#[track_caller]
fn content_of(body: &str) -> Vec<u8> {
    ok_bytes(one(body).unwrap())
}

fn obj(content_json: &str, encoding_json: Option<&str>) -> String {
    match encoding_json {
        Some(e) => format!(r#"{{"path":"/a","encoding":{e},"content":{content_json}}}"#),
        None => format!(r#"{{"path":"/a","content":{content_json}}}"#),
    }
}

// ---------------------------------------------------------------------------
// Escapes and text

#[test]
fn escapes_all_kinds() {
    let body = obj(
        r#""a\"b\\c\/d\be\ff\ng\rh\ti\u0041\u00e9\u20AC\ud83d\ude00\u0000z""#,
        None,
    );
    assert_eq!(
        content_of(&body),
        "a\"b\\c/d\u{8}e\u{c}f\ng\rh\ti\u{41}é€😀\0z".as_bytes()
    );
}

#[test]
fn raw_utf8_passes_through() {
    assert_eq!(
        content_of(&obj("\"héllo 😀 wörld\"", None)),
        "héllo 😀 wörld".as_bytes()
    );
}

#[test]
fn lone_surrogates_become_replacement_char() {
    let r = "\u{FFFD}";
    assert_eq!(
        content_of(&obj(r#""\ud800x""#, None)),
        format!("{r}x").as_bytes()
    );
    assert_eq!(content_of(&obj(r#""\udc00""#, None)), r.as_bytes());
    assert_eq!(content_of(&obj(r#""\ud800""#, None)), r.as_bytes());
    assert_eq!(
        content_of(&obj(r#""\ud800\n""#, None)),
        format!("{r}\n").as_bytes()
    );
    assert_eq!(
        content_of(&obj(r#""\ud800\ud83d\ude00""#, None)),
        format!("{r}😀").as_bytes()
    );
    assert_eq!(
        content_of(&obj(r#""\ud800\u0041""#, None)),
        format!("{r}A").as_bytes()
    );
}

#[test]
fn invalid_escapes_and_control_chars_are_syntax_errors() {
    for s in [
        r#""\x""#,
        r#""\u12G4""#,
        "\"a\nb\"",
        "\"\t\"",
        r#""\ud800\x""#,
    ] {
        match one(&obj(s, None)) {
            Err(ScanError::Syntax { .. }) => {}
            other => panic!("{s}: {other:?}"),
        }
    }
}

#[test]
fn text_encodings_any_case() {
    for enc in [
        "null",
        r#""""#,
        r#""utf-8""#,
        r#""UTF-8""#,
        r#""utf8""#,
        r#""Utf8""#,
    ] {
        assert_eq!(content_of(&obj(r#""hi\n""#, Some(enc))), b"hi\n", "{enc}");
    }
    assert_eq!(content_of(&obj(r#""hi\n""#, None)), b"hi\n");
}

#[test]
fn path_with_escapes_and_nul_is_returned_exactly() {
    let o = one(r#"{"path":"/a\u0000b/\u00e9\ud83d\ude00\/x\"y","content":"z"}"#).unwrap();
    match o {
        EntryOutcome::Ok { meta, .. } => assert_eq!(meta.path.unwrap(), "/a\0b/é😀/x\"y"),
        _ => panic!(),
    }
}

// ---------------------------------------------------------------------------
// Base64

#[test]
fn base64_padding_with_and_without_any_case() {
    let cases: &[(&str, &[u8])] = &[
        ("", b""),
        ("QQ==", b"A"),
        ("QQ", b"A"),
        ("QUI=", b"AB"),
        ("QUI", b"AB"),
        ("QUJD", b"ABC"),
        ("QUJDRA==", b"ABCD"),
        ("QUJDRA", b"ABCD"),
        (r#"Pz8\/"#, b"???"),   // `\/` inside base64
        (r#"\u0051Q=="#, b"A"), // escaped alphabet char
    ];
    for enc in [r#""base64""#, r#""BASE64""#, r#""Base64""#] {
        for (b64, want) in cases {
            assert_eq!(
                content_of(&obj(&format!("\"{b64}\""), Some(enc))),
                *want,
                "{b64}"
            );
        }
    }
}

#[test]
fn bad_base64_is_a_bad_entry() {
    for b64 in [
        "Q", "QQ=", "QQ===", "QUJD=", "QQ==QQ==", "Q!==", "QQ=A", "QU JD", "QUJDR", "-_-_", "=",
        "QQ\\n",
    ] {
        let r = bad_reason(one(&obj(&format!("\"{b64}\""), Some(r#""base64""#))).unwrap());
        assert!(r.contains("base64"), "{b64}: {r}");
    }
}

#[test]
fn large_base64_round_trip() {
    let data: Vec<u8> = (0..1_000_003u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    for engine in [STANDARD, STANDARD_NO_PAD] {
        let body = format!(
            r#"{{"path":"/big","encoding":"base64","contentHash":"{}","content":"{}"}}"#,
            sha(&data).to_uppercase(),
            engine.encode(&data)
        );
        // Direct path: never spools.
        let o = read_file_object(
            std::io::BufReader::with_capacity(1000, body.as_bytes()),
            &mut VecTarget::default(),
            no_spool,
        )
        .unwrap();
        assert_eq!(ok_bytes(o), data);
    }
}

// ---------------------------------------------------------------------------
// Content presence, hashes, metadata

#[test]
fn null_and_absent_content_is_empty_file() {
    for body in [
        r#"{"path":"/e"}"#,
        r#"{"path":"/e","content":null}"#,
        r#"{"content":null,"path":"/e","encoding":"base64"}"#,
    ] {
        let mut t = VecTarget::default();
        let o = read_file_object(body.as_bytes(), &mut t, no_spool).unwrap();
        assert_eq!(ok_bytes(o), b"");
        assert_eq!(t.begins.len(), 1);
        assert_eq!(t.begins[0].path.as_deref(), Some("/e"));
    }
    let empty_hash = sha(b"");
    assert_eq!(
        content_of(&format!(r#"{{"path":"/e","contentHash":"{empty_hash}"}}"#)),
        b""
    );
    assert!(
        bad_reason(one(&format!(r#"{{"path":"/e","contentHash":"{}"}}"#, sha(b"x"))).unwrap())
            .contains("hash")
    );
}

#[test]
fn hash_checks() {
    let h = sha(b"hello");
    assert_eq!(
        content_of(&format!(
            r#"{{"path":"/a","contentHash":"{h}","content":"hello"}}"#
        )),
        b"hello"
    );
    let hu = h.to_uppercase();
    assert_eq!(
        content_of(&format!(
            r#"{{"content":"hello","path":"/a","contentHash":"{hu}"}}"#
        )),
        b"hello"
    );
    for hash in ["null", r#""""#] {
        assert_eq!(
            content_of(&format!(
                r#"{{"path":"/a","contentHash":{hash},"content":"hello"}}"#
            )),
            b"hello"
        );
    }
    let r = bad_reason(
        one(&format!(
            r#"{{"path":"/a","contentHash":"{}","content":"hellO"}}"#,
            h
        ))
        .unwrap(),
    );
    assert!(r.contains("hash mismatch"), "{r}");
}

#[test]
fn all_meta_fields_returned_and_begin_sees_meta_so_far() {
    let body = r#"{"revision":"rev_40","path":"/img/x.png","contentType":"image/png","encoding":"base64","content":"QQ==","contentHash":null,"provider":"p"}"#;
    let mut t = VecTarget::default();
    let o = read_file_object(body.as_bytes(), &mut t, no_spool).unwrap();
    assert_eq!(
        t.begins,
        vec![Meta {
            path: Some("/img/x.png".into()),
            revision: Some("rev_40".into()),
            content_type: Some("image/png".into()),
            encoding: Some("base64".into()),
            content_hash: None,
        }]
    );
    match o {
        EntryOutcome::Ok { meta, decoded, out } => {
            assert_eq!(out, b"A");
            assert_eq!(
                decoded,
                Decoded {
                    size: 1,
                    sha256: sha(b"A")
                }
            );
            assert_eq!(meta.encoding.as_deref(), Some("base64"));
        }
        _ => panic!(),
    }
}

#[test]
fn unknown_encoding_is_bad_in_any_order() {
    for body in [
        r#"{"path":"/a","encoding":"gzip","content":"xx"}"#,
        r#"{"path":"/a","content":"xx","encoding":"gzip"}"#,
        r#"{"path":"/a","encoding":"gzip"}"#,
    ] {
        let mut t = VecTarget::default();
        let r = bad_reason(read_file_object(body.as_bytes(), &mut t, tmp_spool).unwrap());
        assert!(r.contains("unknown content encoding"), "{r}");
        // Content before its encoding began as text (then dropped); otherwise never begun.
        let speculated = matches!(
            (body.find("content"), body.find("encoding")),
            (Some(c), Some(e)) if c < e
        );
        assert_eq!(t.begins.len(), usize::from(speculated), "{body}");
    }
}

#[test]
fn missing_path_and_bad_meta_types() {
    assert!(bad_reason(one(r#"{"content":"x"}"#).unwrap()).contains("missing path"));
    assert!(bad_reason(one(r#"{"path":null,"content":"x"}"#).unwrap()).contains("missing path"));
    assert!(bad_reason(one(r#"{}"#).unwrap()).contains("missing path"));
    assert!(bad_reason(one(r#"{"path":5,"content":"x"}"#).unwrap()).contains("path must be"));
    assert!(bad_reason(one(r#"{"path":"/a","revision":{"a":1}}"#).unwrap()).contains("revision"));
    assert!(bad_reason(one(r#"{"path":"/a","content":[1,2]}"#).unwrap()).contains("content"));
    assert!(bad_reason(one(r#"{"path":"/a","path":"/b"}"#).unwrap()).contains("duplicate"));
    assert!(
        bad_reason(one(r#"{"path":"/a","content":"x","content":"y"}"#).unwrap())
            .contains("duplicate")
    );
    // Metadata must be UTF-8 (content need not be).
    let mut body = br#"{"path":"/a"#.to_vec();
    body.push(0xff);
    body.extend_from_slice(br#"","content":""#);
    body.push(0xfe);
    body.extend_from_slice(br#""}"#);
    let o = read_file_object(&body[..], &mut VecTarget::default(), no_spool).unwrap();
    assert!(bad_reason(o).contains("UTF-8"));
}

#[test]
fn oversize_metadata() {
    let exact = "p".repeat(MAX_META_LEN);
    let o = one(&format!(r#"{{"path":"{exact}","content":"x"}}"#)).unwrap();
    assert_eq!(ok_bytes(o), b"x");
    let over = "p".repeat(MAX_META_LEN + 1);
    for key in ["path", "revision", "contentHash", "contentType", "encoding"] {
        let body = format!(r#"{{"path":"/a","{key}":"{over}","content":"x"}}"#);
        let body = body.replacen(r#""path":"/a","path""#, r#""path""#, 1);
        let mut t = VecTarget::default();
        let r = bad_reason(read_file_object(body.as_bytes(), &mut t, no_spool).unwrap());
        assert!(r.contains("longer than"), "{key}: {r}");
        assert!(t.begins.is_empty());
    }
    // An escape pushing it over the limit counts too.
    let body = format!(r#"{{"path":"{}\n"}}"#, "p".repeat(MAX_META_LEN));
    assert!(bad_reason(one(&body).unwrap()).contains("longer than"));
}

// ---------------------------------------------------------------------------
// Unknown keys, spooling

#[test]
fn unknown_keys_of_every_type_are_skipped() {
    let huge = "y".repeat(3 << 20);
    let body = format!(
        r#"{{ "a" : {{"x":[1,-2.5e+10,0,0.5,1E3,-0,{{}},[],[[]],{{"k":null}}],"y":{{"z":"\"}}]"}}}},
            "b":[true,false,null,"s\u0022",[{{"q":[]}}]], "n1":-0.0e-0, "n2":123456789012345678901234567890,
            "t":true, "f":false, "nul":null, "huge":"{huge}", "{huge}":1,
            "path":"/a", "semantics":{{"properties":{{"a":"b"}},"relations":["x"]}},
            "encoding":"utf-8", "content":"ok", "lastEditedAt":"2026-01-01", "z":{{}} }}"#
    );
    assert_eq!(content_of(&body), b"ok");
}

#[test]
fn deep_nesting_in_unknown_values() {
    let depth = 1000;
    let body = format!(
        r#"{{"path":"/a","s":{}1{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    assert_eq!(content_of(&body), b"");
    let depth = MAX_SKIP_DEPTH + 1;
    let body = format!(
        r#"{{"path":"/a","s":{}1{}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    assert!(matches!(one(&body), Err(ScanError::Syntax { .. })));
}

#[test]
fn invalid_json_values_in_unknown_keys() {
    for v in [
        "01",
        "-",
        "1.",
        "1e",
        "+1",
        ".5",
        "tru",
        "nul",
        "[1,]",
        "{\"a\"}",
        "{\"a\":1,}",
        "[1 2]",
        "{1:2}",
        "'x'",
        "]",
    ] {
        let body = format!(r#"{{"path":"/a","x":{v}}}"#);
        match one(&body) {
            Err(ScanError::Syntax { .. }) => {}
            other => panic!("{v}: {other:?}"),
        }
    }
}

fn counting_spool(count: Rc<Cell<usize>>) -> impl FnMut() -> io::Result<File> {
    move || {
        count.set(count.get() + 1);
        tempfile::tempfile()
    }
}

#[test]
fn content_before_encoding_is_spooled() {
    let data: Vec<u8> = (0..300_001u32).map(|i| (i % 251) as u8).collect();
    let b64 = STANDARD.encode(&data);
    for (size, want_files) in [(10usize, 0usize), (300_001, 1)] {
        let d = &data[..size];
        let b = if size == 10 {
            STANDARD.encode(d)
        } else {
            b64.clone()
        };
        let body = format!(
            r#"{{"content":"{b}","path":"/s","contentHash":"{}","encoding":"base64","revision":"r"}}"#,
            sha(d)
        );
        let count = Rc::new(Cell::new(0));
        let mut t = VecTarget::default();
        let o = read_file_object(body.as_bytes(), &mut t, counting_spool(count.clone())).unwrap();
        assert_eq!(ok_bytes(o), d);
        assert_eq!(count.get(), want_files);
        // The text reading began with the content; the base64 replay at the end sees all metadata.
        assert_eq!(t.begins.len(), 2);
        assert_eq!(t.begins[1].revision.as_deref(), Some("r"));
    }
    // Text content with escapes, encoding never given.
    let text = "line \"one\"\n".repeat(20_000);
    let escaped = text.replace('"', "\\\"").replace('\n', "\\n");
    let count = Rc::new(Cell::new(0));
    let body = format!(r#"{{"content":"{escaped}","path":"/t"}}"#);
    let o = read_file_object(
        body.as_bytes(),
        &mut VecTarget::default(),
        counting_spool(count.clone()),
    )
    .unwrap();
    assert_eq!(ok_bytes(o), text.as_bytes());
    assert_eq!(count.get(), 0, "text (not base64) is never spooled");
    // Text in the base64 alphabet is spooled (it might be base64), then taken as text.
    let alnum: String = (0..200_000u32)
        .map(|i| char::from(b"abcXYZ019+/"[i as usize % 11]))
        .collect();
    let count = Rc::new(Cell::new(0));
    let mut t = VecTarget::default();
    let body = format!(r#"{{"content":"{alnum}","path":"/t","encoding":"utf-8"}}"#);
    let o = read_file_object(body.as_bytes(), &mut t, counting_spool(count.clone())).unwrap();
    assert_eq!(ok_bytes(o), alnum.as_bytes());
    assert_eq!((count.get(), t.begins.len()), (1, 1));
    // Not base64 from its first bytes, declared base64 afterwards: bad, without a spool.
    let count = Rc::new(Cell::new(0));
    let body = format!(r#"{{"content":"{escaped}","path":"/s","encoding":"base64"}}"#);
    let r = read_file_object(
        body.as_bytes(),
        &mut VecTarget::default(),
        counting_spool(count.clone()),
    )
    .unwrap();
    assert!(bad_reason(r).contains("base64"));
    assert_eq!(count.get(), 0);
    // Spooled, then found bad.
    let body = format!(r#"{{"content":"{b64}!","path":"/s","encoding":"base64"}}"#);
    assert!(bad_reason(one(&body).unwrap()).contains("base64"));
    let body = r#"{"content":"QQ==","encoding":"base64"}"#;
    assert!(bad_reason(one(body).unwrap()).contains("missing path"));
}

#[test]
fn local_errors_abort() {
    let body = obj(&format!("\"{}\"", "x".repeat(200_000)), Some("\"utf-8\""));
    let mut t = VecTarget {
        fail_write_after: Some(1000),
        ..Default::default()
    };
    assert!(matches!(
        read_file_object(body.as_bytes(), &mut t, no_spool),
        Err(ScanError::Local(_))
    ));
    let body = format!(r#"{{"path":"/a","content":"{}"}}"#, "x".repeat(200_000));
    let r = read_file_object(body.as_bytes(), &mut VecTarget::default(), || {
        Err(io::Error::other("no space"))
    });
    assert!(matches!(r, Err(ScanError::Local(_))));
}

// ---------------------------------------------------------------------------
// Export arrays

#[test]
fn export_basics() {
    assert_eq!(export("[]").unwrap().len(), 0);
    assert_eq!(export(" \n[ \t]\r\n ").unwrap().len(), 0);
    let v = export(r#"[{"path":"/a","content":"1"},{"path":"/b"} , {"path":"/c","encoding":"base64","content":"Mw"}]"#).unwrap();
    let v: Vec<Vec<u8>> = v.into_iter().map(ok_bytes).collect();
    assert_eq!(v, vec![b"1".to_vec(), b"".to_vec(), b"3".to_vec()]);
    for body in [
        "[1]",
        "[{\"path\":\"/a\"},2]",
        "[\"x\"]",
        "[null]",
        "[[]]",
        "{}",
        "[{\"path\":\"/a\"},]",
        "[,]",
        "[{\"path\":\"/a\"} {\"path\":\"/b\"}]",
    ] {
        assert!(
            matches!(export(body), Err(ScanError::Syntax { .. })),
            "{body}"
        );
    }
}

#[test]
fn trailing_garbage() {
    for body in ["[]x", "[] []", "[]]", "[],"] {
        assert!(
            matches!(export(body), Err(ScanError::Syntax { .. })),
            "{body}"
        );
    }
    assert!(matches!(
        one(r#"{"path":"/a"} x"#),
        Err(ScanError::Syntax { .. })
    ));
    assert!(matches!(
        one(r#"{"path":"/a"}{}"#),
        Err(ScanError::Syntax { offset: 13, .. })
    ));
    assert!(matches!(
        one("[]"),
        Err(ScanError::Syntax { offset: 0, .. })
    ));
    assert!(matches!(one(""), Err(ScanError::Eof)));
    assert!(one("\n{\"path\":\"/a\"}\n\n ").is_ok());
}

#[test]
fn per_entry_problems_do_not_stop_the_export() {
    let good = STANDARD.encode(vec![7u8; 100_000]);
    let mut bad_mid = good.clone();
    bad_mid.insert(5000, '*');
    let body = format!(
        r#"[{{"path":"/1","encoding":"base64","content":"{bad_mid}","semantics":{{}}}},
            {{"path":"/2","contentHash":"{}","content":"hello"}},
            {{"path":"/3","encoding":"rot13","content":"x"}},
            {{"path":"/4","content":"{bad_mid}","encoding":"base64"}},
            {{"content":"x"}},
            {{"path":"{}"}},
            {{"path":"/7","encoding":"base64","content":"{good}"}}]"#,
        sha(b"other"),
        "p".repeat(MAX_META_LEN + 1)
    );
    let v = export(&body).unwrap();
    assert_eq!(v.len(), 7);
    let mut it = v.into_iter();
    assert!(bad_reason(it.next().unwrap()).contains("base64"));
    assert!(bad_reason(it.next().unwrap()).contains("hash mismatch"));
    assert!(bad_reason(it.next().unwrap()).contains("unknown content encoding"));
    assert!(bad_reason(it.next().unwrap()).contains("base64"));
    assert!(bad_reason(it.next().unwrap()).contains("missing path"));
    assert!(bad_reason(it.next().unwrap()).contains("longer than"));
    assert_eq!(ok_bytes(it.next().unwrap()), vec![7u8; 100_000]);
}

#[test]
fn stop_from_callback() {
    let body = r#"[{"path":"/a"},{"path":"/b"},{"path":"/c"}]"#;
    let mut seen = 0;
    let r = read_export(body.as_bytes(), &mut VecTarget::default(), no_spool, |_| {
        seen += 1;
        if seen == 2 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    assert!(matches!(r, Err(ScanError::Stopped)));
    assert_eq!(seen, 2);
}

/// Reader that fails with a connection error after `n` bytes.
struct FailAfter<'a>(&'a [u8], usize);
impl Read for FailAfter<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.1 == 0 {
            return Err(io::Error::new(io::ErrorKind::ConnectionReset, "cut"));
        }
        let n = buf.len().min(self.1).min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        self.1 -= n;
        Ok(n)
    }
}

#[test]
fn read_errors_are_reported() {
    let body = format!(r#"[{{"path":"/a","content":"{}"}}]"#, "x".repeat(10_000));
    for cut in [0, 1, 20, 5000, body.len() - 1] {
        let r = read_export(
            io::BufReader::with_capacity(64, FailAfter(body.as_bytes(), cut)),
            &mut VecTarget::default(),
            no_spool,
            |_| ControlFlow::Continue(()),
        );
        assert!(matches!(r, Err(ScanError::Read(_))), "{cut}: {r:?}");
    }
}

fn small_export_body() -> String {
    format!(
        r#" [ {{"path":"/a\u00e9\ud83d\ude00","revision":"r1","encoding":"UTF-8","content":"x\ny\"\u0041\ud83d\ude00\/","extra":[1,-2.5e3,true,false,null,{{"k":"v"}}]}},
        {{"content":"QUJD","encoding":"base64","path":"/b","contentHash":"{}"}} ,
        {{"path":"/c","encoding":"base64","content":"QQ","n":0}},
        {{"path":"/d","encoding":"base64","content":"QUI=","e":{{}} ,"f":[]}},{{"path":"/e","content":null}},{{"path":"/f"}} ] "#,
        sha(b"ABC")
    )
}

#[test]
fn truncation_at_every_offset() {
    let body = small_export_body();
    let full = export(&body).unwrap();
    assert_eq!(full.len(), 6);
    let full: Vec<Vec<u8>> = full.into_iter().map(ok_bytes).collect();
    let end = body.trim_end().len();
    assert!(export(&body[..end]).is_ok());
    for i in 0..end {
        let mut got = Vec::new();
        let r = read_export(
            &body.as_bytes()[..i],
            &mut VecTarget::default(),
            tmp_spool,
            |o| {
                got.push(o);
                ControlFlow::Continue(())
            },
        );
        match r {
            Err(ScanError::Eof) => {}
            other => panic!("prefix {i}: {other:?}"),
        }
        for (k, o) in got.into_iter().enumerate() {
            assert_eq!(ok_bytes(o), full[k], "prefix {i}");
        }
    }
    // Same for single objects, including the spooled path.
    let single =
        r#"{"content":"QUJD\/\u0041","path":"/b","encoding":"base64","x":[{"y":-1.5E-3}]}"#;
    assert!(one(single).is_ok());
    for i in 0..single.len() {
        let r = read_file_object(
            &single.as_bytes()[..i],
            &mut VecTarget::default(),
            tmp_spool,
        );
        assert!(matches!(r, Err(ScanError::Eof)), "prefix {i}: {r:?}");
    }
}

// ---------------------------------------------------------------------------
// Property tests

/// A `BufRead` serving the data in chunks of the given sizes (cycled),
/// with an occasional `Interrupted` error.
struct Chunked<'a> {
    data: &'a [u8],
    pos: usize,
    end: usize,
    sizes: Vec<usize>,
    i: usize,
    refills: usize,
}

impl<'a> Chunked<'a> {
    fn new(data: &'a [u8], sizes: Vec<usize>) -> Self {
        Chunked {
            data,
            pos: 0,
            end: 0,
            sizes,
            i: 0,
            refills: 0,
        }
    }
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Chunked<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.end && self.pos < self.data.len() {
            self.refills += 1;
            if self.refills % 7 == 3 {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "EINTR"));
            }
            let s = self.sizes[self.i % self.sizes.len()].max(1);
            self.i += 1;
            self.end = (self.pos + s).min(self.data.len());
        }
        Ok(&self.data[self.pos..self.end])
    }
    fn consume(&mut self, n: usize) {
        self.pos += n;
        assert!(self.pos <= self.end);
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Sum {
    Ok(Meta, Vec<u8>, Decoded),
    Bad(Meta, String),
}

fn run_export(r: impl BufRead) -> (Vec<Sum>, Result<u64, String>) {
    let mut v = Vec::new();
    let res = read_export(r, &mut VecTarget::default(), tmp_spool, |o| {
        v.push(match o {
            EntryOutcome::Ok { meta, decoded, out } => Sum::Ok(meta, out, decoded),
            EntryOutcome::Bad { meta, reason, .. } => Sum::Bad(meta, reason),
        });
        ControlFlow::Continue(())
    });
    let res = res.map_err(|e| match e {
        ScanError::Syntax { offset, msg } => format!("syntax@{offset}: {msg}"),
        ScanError::Eof => "eof".into(),
        other => panic!("unexpected error {other}"),
    });
    (v, res)
}

/// Tiny deterministic RNG for formatting choices.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn ws(rng: &mut Rng) -> &'static str {
    [" ", "", "", "\n", " \t", "\r\n  ", ""][rng.below(7) as usize]
}

/// JSON string literal for `s`, with randomly chosen (valid) escapes.
fn json_str(s: &str, rng: &mut Rng) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        let must = c == '"' || c == '\\' || (c as u32) < 0x20;
        let choice = rng.below(10);
        if !must && choice < 7 {
            o.push(c);
            continue;
        }
        let short = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '/' => Some("\\/"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            _ => None,
        };
        match short {
            Some(e) if choice.is_multiple_of(2) => o.push_str(e),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    if rng.below(2) == 0 {
                        o.push_str(&format!("\\u{u:04x}"));
                    } else {
                        o.push_str(&format!("\\u{u:04X}"));
                    }
                }
            }
        }
    }
    o.push('"');
    o
}

fn arb_string(max: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..max).prop_map(String::from_iter)
}

/// Arbitrary JSON value text (escapes left to `json_str` later, so keep as a tree).
#[derive(Debug, Clone)]
enum J {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

fn arb_json() -> impl Strategy<Value = J> {
    let leaf = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        any::<i64>().prop_map(J::Int),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(J::Float),
        arb_string(12).prop_map(J::Str),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(J::Arr),
            vec((arb_string(6), inner), 0..4).prop_map(J::Obj),
        ]
    })
}

fn render(j: &J, rng: &mut Rng) -> String {
    match j {
        J::Null => "null".into(),
        J::Bool(b) => b.to_string(),
        J::Int(i) => i.to_string(),
        J::Float(f) => format!("{f:e}"),
        J::Str(s) => json_str(s, rng),
        J::Arr(v) => {
            let items: Vec<String> = v.iter().map(|x| render(x, rng)).collect();
            format!(
                "[{}{}]",
                ws(rng),
                items.join(&format!("{},{}", ws(rng), ws(rng)))
            )
        }
        J::Obj(v) => {
            let items: Vec<String> = v
                .iter()
                .map(|(k, x)| {
                    format!(
                        "{}{}:{}{}",
                        json_str(k, rng),
                        ws(rng),
                        ws(rng),
                        render(x, rng)
                    )
                })
                .collect();
            format!("{{{}{}}}", ws(rng), items.join(","))
        }
    }
}

#[derive(Debug, Clone)]
enum EncChoice {
    Absent,
    Null,
    Text(&'static str),
    Base64 { name: &'static str, pad: bool },
}

#[derive(Debug, Clone)]
enum HashChoice {
    Absent,
    Null,
    Empty,
    Lower,
    Upper,
    Wrong,
}

#[derive(Debug, Clone)]
struct GenEntry {
    path: String,
    /// None: content absent (or null, see `content_null`).
    content: Option<Vec<u8>>,
    content_null: bool,
    enc: EncChoice,
    hash: HashChoice,
    content_type: Option<String>,
    extras: Vec<(String, J)>,
    seed: u64,
}

fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        12 => vec(any::<u8>(), 0..200),
        1 => (60_000usize..70_000).prop_map(|n| (0..n).map(|i| (i * 31 % 256) as u8).collect()),
    ]
}

fn arb_entry() -> impl Strategy<Value = GenEntry> {
    let enc = prop_oneof![
        Just(EncChoice::Absent),
        Just(EncChoice::Null),
        prop_oneof![
            Just(""),
            Just("utf-8"),
            Just("UTF-8"),
            Just("utf8"),
            Just("Utf8")
        ]
        .prop_map(EncChoice::Text),
        (
            prop_oneof![Just("base64"), Just("BASE64"), Just("Base64")],
            any::<bool>()
        )
            .prop_map(|(name, pad)| EncChoice::Base64 { name, pad }),
        (prop_oneof![Just("base64")], any::<bool>())
            .prop_map(|(name, pad)| EncChoice::Base64 { name, pad }),
    ];
    let hash = prop_oneof![
        Just(HashChoice::Absent),
        Just(HashChoice::Null),
        Just(HashChoice::Empty),
        Just(HashChoice::Lower),
        Just(HashChoice::Lower),
        Just(HashChoice::Upper),
        Just(HashChoice::Wrong),
    ];
    let text = prop_oneof![
        10 => arb_string(150),
        1 => (40_000usize..50_000).prop_map(|n| "a\"é\n😀\\/ x".repeat(n / 12)),
    ];
    (
        arb_string(20),
        enc,
        hash,
        prop_oneof![4 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)],
        arb_bytes(),
        text,
        proptest::option::of(arb_string(10)),
        vec((arb_string(6), arb_json()), 0..4),
        any::<u64>(),
    )
        .prop_map(
            |(path, enc, hash, absent, bytes, text, content_type, extras, seed)| {
                let content = match (&enc, absent) {
                    (_, 1 | 2) => None,
                    (EncChoice::Base64 { .. }, _) => Some(bytes),
                    _ => Some(text.into_bytes()),
                };
                GenEntry {
                    path: format!("/{path}"),
                    content,
                    content_null: absent == 2,
                    enc,
                    hash,
                    content_type,
                    extras,
                    seed: seed | 1,
                }
            },
        )
}

impl GenEntry {
    fn decoded(&self) -> Vec<u8> {
        self.content.clone().unwrap_or_default()
    }

    fn hash_str(&self) -> Option<Option<String>> {
        let h = sha(&self.decoded());
        match self.hash {
            HashChoice::Absent => None,
            HashChoice::Null => Some(None),
            HashChoice::Empty => Some(Some(String::new())),
            HashChoice::Lower => Some(Some(h)),
            HashChoice::Upper => Some(Some(h.to_uppercase())),
            HashChoice::Wrong => Some(Some(sha(b"nope"))),
        }
    }

    fn expected_meta(&self) -> Meta {
        Meta {
            path: Some(self.path.clone()),
            revision: None,
            content_hash: self.hash_str().flatten(),
            content_type: self.content_type.clone(),
            encoding: match &self.enc {
                EncChoice::Absent | EncChoice::Null => None,
                EncChoice::Text(s) => Some(s.to_string()),
                EncChoice::Base64 { name, .. } => Some(name.to_string()),
            },
        }
    }

    fn expected(&self) -> Option<Vec<u8>> {
        match self.hash {
            HashChoice::Wrong => None,
            _ => Some(self.decoded()),
        }
    }

    fn render(&self, rng: &mut Rng) -> String {
        let mut fields: Vec<(String, String)> = Vec::new();
        fields.push(("path".into(), json_str(&self.path, rng)));
        match &self.enc {
            EncChoice::Absent => {}
            EncChoice::Null => fields.push(("encoding".into(), "null".into())),
            EncChoice::Text(s) | EncChoice::Base64 { name: s, .. } => {
                fields.push(("encoding".into(), json_str(s, rng)))
            }
        }
        match self.hash_str() {
            None => {}
            Some(None) => fields.push(("contentHash".into(), "null".into())),
            Some(Some(h)) => fields.push(("contentHash".into(), json_str(&h, rng))),
        }
        if let Some(ct) = &self.content_type {
            fields.push(("contentType".into(), json_str(ct, rng)));
        }
        match &self.content {
            None if self.content_null => fields.push(("content".into(), "null".into())),
            None => {}
            Some(bytes) => {
                let s = match &self.enc {
                    EncChoice::Base64 { pad: true, .. } => STANDARD.encode(bytes),
                    EncChoice::Base64 { pad: false, .. } => STANDARD_NO_PAD.encode(bytes),
                    _ => String::from_utf8(bytes.clone()).unwrap(),
                };
                fields.push(("content".into(), json_str(&s, rng)));
            }
        }
        for (k, v) in &self.extras {
            fields.push((format!("x{k}"), render(v, rng)));
        }
        // Shuffle (Fisher-Yates).
        for i in (1..fields.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            fields.swap(i, j);
        }
        let items: Vec<String> = fields
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}{}{}:{}{}{}",
                    ws(rng),
                    json_str(k, rng),
                    ws(rng),
                    ws(rng),
                    v,
                    ws(rng)
                )
            })
            .collect();
        format!("{{{}{}}}", items.join(","), ws(rng))
    }
}

fn render_export(entries: &[GenEntry], seed: u64) -> String {
    let mut rng = Rng(seed | 1);
    let mut s = format!("{}[{}", ws(&mut rng), ws(&mut rng));
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            s.push_str(ws(&mut rng));
            s.push(',');
            s.push_str(ws(&mut rng));
        }
        let mut erng = Rng(e.seed);
        s.push_str(&e.render(&mut erng));
    }
    s.push_str(ws(&mut rng));
    s.push(']');
    s.push_str(ws(&mut rng));
    s
}

fn arb_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        vec(Just(1usize), 1..2),
        vec(1usize..8, 1..10),
        vec(1usize..300, 1..10),
        vec(1usize..70_000, 1..4),
    ]
}

fn check_never_lies(v: &[Sum]) {
    for s in v {
        if let Sum::Ok(meta, out, decoded) = s {
            assert_eq!(sha(out), decoded.sha256);
            assert_eq!(out.len() as u64, decoded.size);
            assert!(meta.path.is_some());
            if let Some(h) = meta.content_hash.as_deref().filter(|h| !h.is_empty()) {
                assert!(h.eq_ignore_ascii_case(&decoded.sha256));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn split_anywhere(entries in vec(arb_entry(), 0..6), seed in any::<u64>(), sizes in arb_sizes()) {
        let body = render_export(&entries, seed);
        let (whole, res) = run_export(body.as_bytes());
        prop_assert_eq!(res, Ok(entries.len() as u64));
        prop_assert_eq!(whole.len(), entries.len());
        for (got, e) in whole.iter().zip(&entries) {
            match (got, e.expected()) {
                (Sum::Ok(meta, out, decoded), Some(want)) => {
                    prop_assert_eq!(meta, &e.expected_meta());
                    prop_assert_eq!(out, &want);
                    prop_assert_eq!(&decoded.sha256, &sha(&want));
                }
                (Sum::Bad(meta, reason), None) => {
                    prop_assert!(reason.contains("hash mismatch"), "{}", reason);
                    prop_assert_eq!(meta, &e.expected_meta());
                }
                (got, want) => prop_assert!(false, "got {:?}, want {:?}", got, want.map(|w| w.len())),
            }
        }
        let (chunked, res) = run_export(Chunked::new(body.as_bytes(), sizes));
        prop_assert_eq!(res, Ok(entries.len() as u64));
        prop_assert_eq!(chunked, whole);
    }

    #[test]
    fn single_object_split_anywhere(e in arb_entry(), sizes in arb_sizes()) {
        let body = e.render(&mut Rng(e.seed));
        let whole = read_file_object(body.as_bytes(), &mut VecTarget::default(), tmp_spool).unwrap();
        let chunked = read_file_object(Chunked::new(body.as_bytes(), sizes), &mut VecTarget::default(), tmp_spool).unwrap();
        match (whole, chunked, e.expected()) {
            (EntryOutcome::Ok { out: a, .. }, EntryOutcome::Ok { out: b, .. }, Some(want)) => {
                prop_assert_eq!(&a, &want);
                prop_assert_eq!(&b, &want);
            }
            (EntryOutcome::Bad { .. }, EntryOutcome::Bad { .. }, None) => {}
            (a, b, _) => prop_assert!(false, "{:?} / {:?}", a, b),
        }
    }

    #[test]
    fn mutated_bodies_never_panic_or_lie(
        entries in vec(arb_entry(), 1..4),
        seed in any::<u64>(),
        sizes in arb_sizes(),
        muts in vec((any::<prop::sample::Index>(), 0u8..4, any::<u8>()), 1..4),
    ) {
        let mut body = render_export(&entries, seed).into_bytes();
        for (at, kind, byte) in muts {
            if body.is_empty() { break; }
            let i = at.index(body.len());
            match kind {
                0 => body[i] = byte,
                1 => { body.remove(i); }
                2 => body.insert(i, byte),
                _ => body.truncate(i),
            }
        }
        let (whole, res_whole) = run_export(&body[..]);
        check_never_lies(&whole);
        let (chunked, res_chunked) = run_export(Chunked::new(&body, sizes));
        check_never_lies(&chunked);
        prop_assert_eq!(whole, chunked);
        prop_assert_eq!(res_whole, res_chunked);
    }
}

// ---------------------------------------------------------------------------
// Memory bound (run alone: `cargo test --release -- --ignored flat_memory`)

/// Streams `{"path":..,"content":"<base64>",..}` for `blocks` repetitions of a
/// 3 MiB block without ever holding the body.
struct GenBody {
    parts: Vec<Vec<u8>>, // head, block, tail
    blocks: usize,
    state: usize, // 0 head, 1..=blocks block, blocks+1 tail, then done
    off: usize,
}

impl Read for GenBody {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let part = match self.state {
                0 => &self.parts[0],
                s if s <= self.blocks => &self.parts[1],
                s if s == self.blocks + 1 => &self.parts[2],
                _ => return Ok(0),
            };
            if self.off == part.len() {
                self.state += 1;
                self.off = 0;
                continue;
            }
            let n = buf.len().min(part.len() - self.off);
            buf[..n].copy_from_slice(&part[self.off..self.off + n]);
            self.off += n;
            return Ok(n);
        }
    }
}

fn vm_hwm_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct CountTarget;
impl ContentTarget for CountTarget {
    type Out = u64;
    fn begin(&mut self, _: &Meta) -> io::Result<u64> {
        Ok(0)
    }
    fn write(&mut self, out: &mut u64, d: &[u8]) -> io::Result<()> {
        *out += d.len() as u64;
        Ok(())
    }
}

#[test]
#[ignore]
fn flat_memory_for_1_gib_file() {
    let block: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let blocks = 342; // ~1 GiB decoded
    let mut h = Sha256::new();
    for _ in 0..blocks {
        h.update(&block);
    }
    let want = hex::encode(h.finalize());
    for content_first in [false, true] {
        let (head, tail) = if content_first {
            (
                r#"{"path":"/big","content":""#.to_string(),
                format!(r#"","encoding":"base64","contentHash":"{want}"}}"#),
            )
        } else {
            (
                format!(
                    r#"{{"path":"/big","encoding":"base64","contentHash":"{want}","content":""#
                ),
                r#""}"#.to_string(),
            )
        };
        let gen_body = GenBody {
            parts: vec![
                head.into_bytes(),
                STANDARD.encode(&block).into_bytes(),
                tail.into_bytes(),
            ],
            blocks,
            state: 0,
            off: 0,
        };
        let before = vm_hwm_kib();
        let o = read_file_object(
            io::BufReader::with_capacity(256 << 10, gen_body),
            &mut CountTarget,
            tmp_spool,
        )
        .unwrap();
        let grown = vm_hwm_kib().saturating_sub(before);
        match o {
            EntryOutcome::Ok { out, decoded, .. } => {
                assert_eq!(out, (3u64 << 20) * blocks as u64);
                assert_eq!(decoded.sha256, want);
            }
            EntryOutcome::Bad { reason, .. } => panic!("{reason}"),
        }
        eprintln!("content_first={content_first}: peak RSS grew by {grown} KiB");
        assert!(grown < 8 << 10, "peak RSS grew by {grown} KiB");
    }
}
