use super::*;

pub(super) fn context(offsets: SourceOffsets, encode_values: bool) -> SourceBuildContext {
    SourceBuildContext {
        component: "src".into(),
        offsets,
        encode_values,
        units: None,
        exactly_once: false,
        status: None,
    }
}

/// Every item the reader makes of `csv`, with values as JSON text (`encode`) or as trees.
fn read(csv: impl AsRef<[u8]>, encode: bool) -> Vec<SourceRecord> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.csv");
    std::fs::write(&path, csv).unwrap();
    let config: CsvSourceConfig = serde_yaml::from_str(&format!(
        "{{ path: '{}', key: Date, timestamp_column: Date, null_values: ['null'], \
         columns: {{ Date: date, Close: float, Volume: int }} }}",
        path.display()
    ))
    .unwrap();
    let settings = ReaderSettings::new(&config, context(SourceOffsets::new(), encode)).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    CsvReader::new(settings).run(tx);
    let mut items = Vec::new();
    while let Ok(batch) = rx.try_recv() {
        items.extend(batch.unwrap());
    }
    items
}

/// A row that cannot become a record keeps the key and time it would have had, where
/// they can be read, so its dead letter is keyed and dated like its neighbours.
#[test]
fn a_bad_row_keeps_its_key_and_time_for_its_dead_letter() {
    let items = read(
        "Date,Close,Volume\n2014-09-17,457.3,21056800\n2014-09-18,not-a-number,1\nbad-date,1.0,1\n",
        false,
    );
    let bad: Vec<&BadInput> = items
        .iter()
        .filter_map(|i| match &i.payload {
            Payload::Bad(bad) => Some(bad),
            _ => None,
        })
        .collect();
    assert_eq!(bad.len(), 2);
    assert_eq!(bad[0].key.as_deref(), Some(b"2014-09-18".as_slice()));
    assert_eq!(bad[0].timestamp, Some(1_410_998_400_000));
    // Its date cannot be read: keyed by the text, not dated.
    assert_eq!(bad[1].key.as_deref(), Some(b"bad-date".as_slice()));
    assert_eq!(bad[1].timestamp, None);
}

/// Every item made of the JSON-lines `text`, resuming at `offsets`.
fn read_json_lines(
    text: &str,
    offsets: SourceOffsets,
    encode: bool,
) -> (std::path::PathBuf, Vec<SourceRecord>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.jsonl");
    std::fs::write(&path, text).unwrap();
    let config = JsonLinesFiles {
        path: path.display().to_string(),
        key: Some("/id".into()),
        time: Some("/at".into()),
        follow: false,
        poll_interval: std::time::Duration::from_secs(1),
    };
    let settings = ReaderSettings::json_lines(&config, context(offsets, encode)).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    CsvReader::new(settings).run(tx);
    let mut items = Vec::new();
    while let Ok(batch) = rx.try_recv() {
        items.extend(batch.unwrap());
    }
    (path, items, dir)
}

/// Lines as written (quotes, commas, tabs and CRLF endings are not CSV to it), key and time
/// from pointers, blank lines skipped, a line that is not JSON a bad record with its line
/// number and bytes; a restart at a delivered line's offset reads what follows it.
#[test]
fn json_lines_are_records_as_written_and_resume_after_the_last_delivered() {
    let text = "{\"id\": \"a,1\", \"at\": \"2023-02-01T19:00:30Z\", \"t\": \"say \\\"hi\\\"\\tthere\"}\r\n\
                \n\
                {\"id\": 7, \"at\": 1675278031, \"n\": [1, 2]}\n\
                {\"id\": \"broken\n\
                \"just text\"\n";
    for encode in [false, true] {
        let (path, items, _dir) = read_json_lines(text, SourceOffsets::new(), encode);
        assert_eq!(items.len(), 4, "{items:?}");
        let record = |i: usize| match &items[i].payload {
            Payload::Record(r) => r.clone(),
            other => panic!("item {i}: {other:?}"),
        };
        let value = |r: &Record| match &r.encoded_value {
            Some(text) => serde_json::from_slice::<Value>(text).unwrap(),
            None => r.value.clone(),
        };
        let first = record(0);
        assert_eq!(value(&first)["t"], "say \"hi\"\tthere");
        assert_eq!(first.key.as_deref(), Some(&b"a,1"[..]));
        assert_eq!(first.timestamp, Some(1_675_278_030_000));
        let second = record(1);
        assert_eq!(value(&second)["n"], serde_json::json!([1, 2]));
        assert_eq!(second.key.as_deref(), Some(&b"7"[..]));
        assert_eq!(second.timestamp, Some(1_675_278_031_000));
        match &items[2].payload {
            Payload::Bad(bad) => {
                assert!(bad.message.starts_with("not JSON"), "{}", bad.message);
                assert_eq!(bad.location, format!("{} line 4", path.display()));
                assert_eq!(bad.raw, b"{\"id\": \"broken");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(value(&record(3)), Value::String("just text".into()));
        // Resuming after the second record reads the rest only.
        let mut offsets = SourceOffsets::new();
        offsets.insert(path.display().to_string(), items[1].offset.clone());
        std::fs::write(&path, text).unwrap();
        let dir = path.parent().unwrap().to_path_buf();
        let config = JsonLinesFiles {
            path: dir.join("in.jsonl").display().to_string(),
            key: None,
            time: None,
            follow: false,
            poll_interval: std::time::Duration::from_secs(1),
        };
        let settings = ReaderSettings::json_lines(&config, context(offsets, encode)).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        CsvReader::new(settings).run(tx);
        let rest: Vec<SourceRecord> = std::iter::from_fn(|| rx.try_recv().ok())
            .flat_map(|b| b.unwrap())
            .collect();
        assert_eq!(rest.len(), 2, "{rest:?}");
        assert!(matches!(rest[0].payload, Payload::Bad(_)));
    }
}

/// A row whose only values are its key and its time holds nothing: with a timestamp
/// column and no key (the date is the time, not the key), Yahoo's `null` days are still
/// all-null rows.
#[test]
fn the_time_column_does_not_make_a_null_row_hold_something() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.csv");
    std::fs::write(
        &path,
        "Date,Close,Volume\n2020-04-16,7116.8,46783242377\n2020-04-17,null,null\n",
    )
    .unwrap();
    let config: CsvSourceConfig = serde_yaml::from_str(&format!(
        "{{ path: '{}', timestamp_column: Date, null_values: ['null'], all_null_rows: skip, \
         columns: {{ Date: date, Close: float, Volume: int }} }}",
        path.display()
    ))
    .unwrap();
    let settings = ReaderSettings::new(&config, context(SourceOffsets::new(), false)).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    CsvReader::new(settings).run(tx);
    let items: Vec<SourceRecord> = std::iter::from_fn(|| rx.try_recv().ok())
        .flat_map(|b| b.unwrap())
        .collect();
    assert_eq!(items.len(), 2, "{items:?}");
    assert!(matches!(items[0].payload, Payload::Record(_)));
    assert!(
        matches!(items[1].payload, Payload::Skipped { .. }),
        "{:?}",
        items[1].payload
    );
}

#[test]
fn encoded_values_are_the_json_text_of_the_same_records() {
    let csv = "Date,Close,Volume,Note\n\
               2014-09-17,457.334015,21056800,\"say \"\"hi\"\"\"\n\
               2014-09-18,null,null,\n\
               2014-09-19,abc,1,x\n\
               2014-09-20,1\n\
               2014-09-21,408,36863600,\\\\\n";
    let trees = read(csv, false);
    let texts = read(csv, true);
    assert_eq!(trees.len(), 5);
    assert_eq!(texts.len(), trees.len());
    let mut records = 0;
    for (tree, text) in trees.into_iter().zip(texts) {
        assert_eq!(tree.offset, text.offset);
        match (tree.payload, text.payload) {
            (Payload::Record(tree), Payload::Record(mut text)) => {
                assert!(tree.encoded_value.is_none());
                assert!(text.encoded_value.is_some() && text.value.is_null());
                text.decode_value().unwrap();
                assert_eq!(tree, text);
                assert!(tree.timestamp.is_some() && tree.key.is_some());
                records += 1;
            }
            (Payload::Bad(tree), Payload::Bad(text)) => {
                assert_eq!(tree.message, text.message)
            }
            (tree, text) => panic!("{tree:?} vs {text:?}"),
        }
    }
    assert_eq!(records, 3, "rows 1, 2 and 5 are records; 3 and 4 are bad");
}

#[test]
fn text_that_is_not_utf8_makes_a_bad_row_naming_its_field() {
    let mut csv = b"Date,Close,Volume,Note\n2014-09-17,1.5,2,caf\xc3\xa9\n".to_vec();
    // Bytes invalid in one field; a character split across two fields (valid only joined).
    csv.extend_from_slice(b"2014-09-18,1.5,2,\xff\n2014-09-19,1.5,2\xc3,\xa9\n");
    for encode in [false, true] {
        let items = read(&csv, encode);
        assert_eq!(items.len(), 3);
        let Payload::Record(mut first) = items[0].payload.clone() else {
            panic!("{:?}", items[0]);
        };
        first.decode_value().unwrap();
        assert_eq!(first.value["Note"], "café");
        for (item, field) in items[1..].iter().zip(["Note", "Volume"]) {
            let Payload::Bad(bad) = &item.payload else {
                panic!("{item:?}");
            };
            assert_eq!(bad.message, format!("field `{field}` is not valid UTF-8"));
            assert!(!bad.raw.is_empty());
        }
    }
}
