use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::*;
use crate::model::{compare_label_sets, MatchType};
use crate::tsdb::chunkenc::{decode_xor, XorAppender};

const H2: i64 = 2 * 3600 * 1000;
const BASE: i64 = 1_700_002_800_000; // a multiple of 2h

type Pairs = Vec<(String, String)>;
/// (min_t, max_t, chunk bytes)
type TChunk = (i64, i64, Vec<u8>);
type Selected = Vec<(Pairs, Vec<TChunk>)>;

/// A series as the tests describe it: labels sorted by name, chunks as (min_t, max_t, bytes).
#[derive(Debug, Clone)]
struct TSeries {
    labels: Pairs,
    chunks: Vec<TChunk>,
}

fn chunks_of(samples: &[(i64, f64)], per_chunk: usize) -> Vec<TChunk> {
    samples
        .chunks(per_chunk)
        .map(|part| {
            let mut app = XorAppender::new();
            for &(t, v) in part {
                app.append(t, v);
            }
            (part[0].0, part[part.len() - 1].0, app.into_bytes())
        })
        .collect()
}

fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> TSeries {
    TSeries {
        labels: labels
            .iter()
            .map(|&(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        chunks: chunks_of(samples, 120),
    }
}

fn sort_series(s: &mut [TSeries]) {
    s.sort_by(|a, b| {
        compare_label_sets(
            a.labels.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
            b.labels.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
        )
    });
}

fn symbols_of(s: &[TSeries]) -> Vec<String> {
    let set: BTreeSet<&str> = s
        .iter()
        .flat_map(|x| x.labels.iter().flat_map(|(n, v)| [n.as_str(), v.as_str()]))
        .collect();
    set.into_iter().map(str::to_string).collect()
}

fn add(w: &mut BlockWriter, s: &TSeries) -> Result<(), BlockError> {
    let labels: Vec<(&str, &str)> = s
        .labels
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let chunks: Vec<ChunkMeta<'_>> = s
        .chunks
        .iter()
        .map(|(a, b, d)| ChunkMeta {
            min_t: *a,
            max_t: *b,
            data: d,
        })
        .collect();
    w.add_series(&labels, &chunks)
}

fn thanos() -> ThanosMeta {
    ThanosMeta {
        labels: [("tenant_id".to_string(), "default-tenant".to_string())].into(),
        downsample: Downsample { resolution: 0 },
        source: "receive".into(),
        ..Default::default()
    }
}

/// Writes `s` (sorted here) as a block under `parent`; returns the block dir and meta.
fn write(parent: &Path, s: &mut [TSeries], mint: i64, maxt: i64) -> (PathBuf, BlockMeta) {
    sort_series(s);
    let mut w = BlockWriter::create(parent, ulid::Ulid::new(), symbols_of(s)).unwrap();
    for x in s.iter() {
        add(&mut w, x).unwrap();
    }
    let meta = w.finish(mint, maxt, Some(thanos())).unwrap();
    (parent.join(&meta.ulid), meta)
}

fn as_test_series(got: Vec<(Labels, Vec<ChunkData>)>) -> Vec<TSeries> {
    got.into_iter()
        .map(|(l, cs)| TSeries {
            labels: l
                .iter()
                .map(|l| (l.name.clone(), l.value.clone()))
                .collect(),
            chunks: cs.into_iter().map(|c| (c.min_t, c.max_t, c.data)).collect(),
        })
        .collect()
}

fn value<'a>(s: &'a TSeries, name: &str) -> &'a str {
    s.labels
        .iter()
        .find(|(n, _)| n == name)
        .map_or("", |(_, v)| v.as_str())
}

/// What a correct select returns, computed by brute force over the input.
fn expected(input: &[TSeries], matchers: &[Matcher], mint: i64, maxt: i64) -> Selected {
    input
        .iter()
        .filter(|s| matchers.iter().all(|m| m.matches(value(s, &m.name))))
        .map(|s| {
            let cs: Vec<_> = s
                .chunks
                .iter()
                .filter(|c| c.1 >= mint && c.0 <= maxt)
                .cloned()
                .collect();
            (s.labels.clone(), cs)
        })
        .filter(|(_, cs)| !cs.is_empty())
        .collect()
}

fn actual(b: &Block, matchers: &[Matcher], mint: i64, maxt: i64) -> Selected {
    as_test_series(b.select(matchers, mint, maxt, false).unwrap())
        .into_iter()
        .map(|s| (s.labels, s.chunks))
        .collect()
}

fn m(kind: MatchType, name: &str, value: &str) -> Matcher {
    Matcher::new(kind, name, value).unwrap()
}

fn label_set() -> impl Strategy<Value = BTreeMap<String, String>> {
    let name = prop_oneof![
        Just("__name__"),
        Just("a"),
        Just("job"),
        Just("le"),
        Just("zz_ü")
    ]
    .prop_map(str::to_string);
    // Quotes, backslashes, newlines, tabs and multi-byte characters, as real label values have.
    let value = "[ab\"\\\\\n\t日🚀 =,{}]{1,4}";
    proptest::collection::btree_map(name, value, 1..4)
}

fn series_strategy() -> impl Strategy<Value = Vec<TSeries>> {
    let one = (
        label_set(),
        0i64..H2 / 2,
        proptest::collection::vec((1i64..90_000, any::<u64>()), 1..300),
        1usize..150,
    );
    proptest::collection::vec(one, 1..25).prop_map(|raw| {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for (labels, start, steps, per_chunk) in raw {
            if !seen.insert(labels.clone()) {
                continue;
            }
            let mut t = BASE + start;
            let mut samples = Vec::new();
            for (step, bits) in steps {
                if t >= BASE + H2 {
                    break;
                }
                samples.push((t, f64::from_bits(bits)));
                t += step;
            }
            out.push(TSeries {
                labels: labels.into_iter().collect(),
                chunks: chunks_of(&samples, per_chunk),
            });
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_blocks_round_trip_and_verify(mut input in series_strategy(), cut in 0i64..H2, width in 0i64..H2) {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, meta) = write(tmp.path(), &mut input, BASE, BASE + H2);
        prop_assert_eq!(verify(&dir).unwrap(), Vec::<String>::new());
        let b = Block::open(&dir).unwrap();
        prop_assert_eq!(b.meta(), &meta);
        prop_assert_eq!(meta.stats.num_series, input.len() as u64);
        prop_assert_eq!(meta.stats.num_chunks, input.iter().map(|s| s.chunks.len() as u64).sum::<u64>());
        let samples: usize = input.iter().flat_map(|s| &s.chunks).map(|c| decode_xor(&c.2).unwrap().len()).sum();
        prop_assert_eq!(meta.stats.num_samples, samples as u64);

        // Matchers drawn from the data: equality, inequality, regexes, and ones matching "".
        let first = &input[0];
        let (n0, v0) = first.labels[0].clone();
        let matcher_sets = vec![
            vec![],
            vec![m(MatchType::Equal, &n0, &v0)],
            vec![m(MatchType::NotEqual, &n0, &v0)],
            vec![m(MatchType::Regex, &n0, &format!("{}|a.*", regex::escape(&v0)))],
            vec![m(MatchType::NotRegex, "job", "a.*")],
            vec![m(MatchType::Equal, "le", "")],
            vec![m(MatchType::NotEqual, "le", "")],
            vec![m(MatchType::Regex, "a", "|b.*")],
            vec![m(MatchType::Equal, "nope", "x")],
            vec![m(MatchType::Regex, "__name__", ".+"), m(MatchType::NotEqual, &n0, &v0)],
            vec![m(MatchType::Equal, &n0, &v0), m(MatchType::Regex, "zz_ü", ".*\n.*")],
        ];
        let (lo, hi) = (BASE + cut, BASE + cut + width);
        for ms in &matcher_sets {
            prop_assert_eq!(actual(&b, ms, i64::MIN, i64::MAX), expected(&input, ms, i64::MIN, i64::MAX), "matchers {:?}", ms);
            prop_assert_eq!(actual(&b, ms, lo, hi), expected(&input, ms, lo, hi), "matchers {:?} in [{}, {}]", ms, lo, hi);
            let skipped = b.select(ms, lo, hi, true).unwrap();
            prop_assert!(skipped.iter().all(|(_, c)| c.is_empty()));
            prop_assert_eq!(skipped.len(), expected(&input, ms, lo, hi).len());

            let matching: Vec<&TSeries> = input.iter().filter(|s| ms.iter().all(|m| m.matches(value(s, &m.name)))).collect();
            let names: BTreeSet<String> = matching.iter().flat_map(|s| s.labels.iter().map(|(n, _)| n.clone())).collect();
            prop_assert_eq!(b.label_names(ms).unwrap(), names.into_iter().collect::<Vec<_>>());
            for name in ["__name__", "a", "job", "le", "zz_ü", "missing"] {
                let values: BTreeSet<String> =
                    matching.iter().map(|s| value(s, name)).filter(|v| !v.is_empty()).map(str::to_string).collect();
                prop_assert_eq!(b.label_values(name, ms).unwrap(), values.into_iter().collect::<Vec<_>>());
            }
        }
    }
}

#[test]
fn block_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Block>();
}

#[test]
fn meta_json_has_the_thanos_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let mut input = vec![series(
        &[("__name__", "up")],
        &[(BASE, 1.0), (BASE + 1000, 2.0)],
    )];
    sort_series(&mut input);
    let id = ulid::Ulid::from_string("01M850R71PFYDQ3QF56PZ0ZC50").unwrap();
    let mut w = BlockWriter::create(tmp.path(), id, symbols_of(&input)).unwrap();
    add(&mut w, &input[0]).unwrap();
    let t = ThanosMeta {
        labels: [
            ("receive_replica".to_string(), "r0".to_string()),
            ("tenant_id".to_string(), "default-tenant".to_string()),
        ]
        .into(),
        upload_time: Some("2026-01-02T03:04:05.123456789Z".into()),
        ..thanos()
    };
    let meta = w.finish(BASE, BASE + H2, Some(t)).unwrap();
    let dir = tmp.path().join("01M850R71PFYDQ3QF56PZ0ZC50");
    let text = std::fs::read_to_string(dir.join("meta.json")).unwrap();
    let chunk_size = std::fs::metadata(dir.join("chunks/000001")).unwrap().len();
    let index_size = std::fs::metadata(dir.join("index")).unwrap().len();
    let want = format!(
        r#"{{
	"ulid": "01M850R71PFYDQ3QF56PZ0ZC50",
	"minTime": {BASE},
	"maxTime": {},
	"stats": {{
		"numSamples": 2,
		"numSeries": 1,
		"numChunks": 1
	}},
	"compaction": {{
		"level": 1,
		"sources": [
			"01M850R71PFYDQ3QF56PZ0ZC50"
		]
	}},
	"version": 1,
	"thanos": {{
		"labels": {{
			"receive_replica": "r0",
			"tenant_id": "default-tenant"
		}},
		"downsample": {{
			"resolution": 0
		}},
		"source": "receive",
		"segment_files": [
			"000001"
		],
		"files": [
			{{
				"rel_path": "chunks/000001",
				"size_bytes": {chunk_size}
			}},
			{{
				"rel_path": "index",
				"size_bytes": {index_size}
			}},
			{{
				"rel_path": "meta.json"
			}}
		],
		"index_stats": {{}},
		"upload_time": "2026-01-02T03:04:05.123456789Z"
	}}
}}
"#,
        BASE + H2
    );
    assert_eq!(text, want);
    assert_eq!(read_meta(&dir).unwrap(), meta);
    assert_eq!(
        std::fs::read(dir.join("tombstones")).unwrap(),
        [0x01, 0x30, 0xba, 0x30, 0x01, 0, 0, 0, 0]
    );
    let names: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["chunks", "index", "meta.json", "tombstones"]
            .map(String::from)
            .into()
    );
    // Without a Thanos section there is no "thanos" key at all, as Prometheus writes it.
    let mut w = BlockWriter::create(tmp.path(), ulid::Ulid::new(), symbols_of(&input)).unwrap();
    add(&mut w, &input[0]).unwrap();
    let meta = w.finish(BASE, BASE + H2, None).unwrap();
    let text = std::fs::read_to_string(tmp.path().join(&meta.ulid).join("meta.json")).unwrap();
    assert!(!text.contains("thanos"), "{text}");
}

#[test]
fn reads_meta_written_by_go() {
    // Prometheus omits zero stats; Go writes a nil map as null; unknown fields are ignored.
    let tmp = tempfile::tempdir().unwrap();
    let json = r#"{"ulid":"01M850R71PFYDQ3QF56PZ0ZC50","minTime":1,"maxTime":2,"stats":{"numSeries":1},
        "compaction":{"level":2,"sources":["A","B"],"parents":[{"ulid":"A","minTime":1,"maxTime":2}]},"version":1,
        "thanos":{"labels":null,"downsample":{"resolution":300000},"source":"compactor","index_stats":{"series_max_size":10},
        "rewrites":[]}}"#;
    std::fs::write(tmp.path().join("meta.json"), json).unwrap();
    let meta = read_meta(tmp.path()).unwrap();
    assert_eq!(meta.stats.num_series, 1);
    assert_eq!(meta.stats.num_samples, 0);
    let t = meta.thanos.unwrap();
    assert!(t.labels.is_empty());
    assert_eq!(t.index_stats.series_max_size, Some(10));
    std::fs::write(
        tmp.path().join("meta.json"),
        json.replace(r#""version":1,"#, r#""version":2,"#),
    )
    .unwrap();
    assert!(matches!(
        read_meta(tmp.path()),
        Err(BlockError::Meta { .. })
    ));
}

#[test]
fn writer_rejects_bad_input_and_stays_usable() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(matches!(
        BlockWriter::create(tmp.path(), ulid::Ulid::new(), ["b", "a"]),
        Err(BlockError::Invalid(_))
    ));
    assert!(matches!(
        BlockWriter::create(tmp.path(), ulid::Ulid::new(), ["a", "a"]),
        Err(BlockError::Invalid(_))
    ));

    let syms = ["__name__", "a", "b", "job", "x", "y"];
    let mut w = BlockWriter::create(tmp.path(), ulid::Ulid::new(), syms).unwrap();
    let good = chunks_of(&[(BASE, 1.0), (BASE + 10, 2.0)], 120);
    let try_add = |w: &mut BlockWriter, labels: &[(&str, &str)], cs: &[TChunk]| {
        let chunks: Vec<ChunkMeta<'_>> = cs
            .iter()
            .map(|(a, b, d)| ChunkMeta {
                min_t: *a,
                max_t: *b,
                data: d,
            })
            .collect();
        w.add_series(labels, &chunks)
    };
    try_add(&mut w, &[("__name__", "x"), ("job", "b")], &good).unwrap();
    // Equal and smaller label sets are out of order; so is a prefix of the previous set.
    assert!(matches!(
        try_add(&mut w, &[("__name__", "x"), ("job", "b")], &good),
        Err(BlockError::OutOfOrder { .. })
    ));
    assert!(matches!(
        try_add(&mut w, &[("__name__", "x"), ("job", "a")], &good),
        Err(BlockError::OutOfOrder { .. })
    ));
    assert!(matches!(
        try_add(&mut w, &[("__name__", "x")], &good),
        Err(BlockError::OutOfOrder { .. })
    ));
    assert!(matches!(
        try_add(&mut w, &[("job", "x"), ("__name__", "y")], &good),
        Err(BlockError::Invalid(_))
    ));
    assert!(matches!(
        try_add(&mut w, &[("__name__", "y"), ("__name__", "y")], &good),
        Err(BlockError::Invalid(_))
    ));
    assert!(matches!(
        try_add(&mut w, &[("__name__", "zzz")], &good),
        Err(BlockError::Invalid(_))
    ));
    assert!(matches!(
        try_add(&mut w, &[], &good),
        Err(BlockError::Invalid(_))
    ));
    assert!(matches!(
        try_add(&mut w, &[("__name__", "y")], &[]),
        Err(BlockError::Invalid(_))
    ));
    let overlapping = [good.clone(), good.clone()].concat();
    assert!(matches!(
        try_add(&mut w, &[("__name__", "y")], &overlapping),
        Err(BlockError::Invalid(_))
    ));
    let backwards = vec![(BASE + 10, BASE, good[0].2.clone())];
    assert!(matches!(
        try_add(&mut w, &[("__name__", "y")], &backwards),
        Err(BlockError::Invalid(_))
    ));
    let empty_chunk = vec![(BASE, BASE, vec![0, 0])];
    assert!(matches!(
        try_add(&mut w, &[("__name__", "y")], &empty_chunk),
        Err(BlockError::Invalid(_))
    ));
    // Nothing of the rejected series reached the files.
    try_add(&mut w, &[("__name__", "y")], &good).unwrap();
    let late = chunks_of(&[(BASE + H2, 1.0)], 120);
    try_add(&mut w, &[("__name__", "y"), ("a", "x")], &late).unwrap();
    assert!(matches!(
        w.finish(BASE, BASE + H2, None),
        Err(BlockError::Invalid(_))
    ));

    let mut w = BlockWriter::create(tmp.path(), ulid::Ulid::new(), syms).unwrap();
    try_add(&mut w, &[("__name__", "x")], &good).unwrap();
    assert!(try_add(&mut w, &[("__name__", "x")], &good).is_err());
    try_add(&mut w, &[("__name__", "y")], &good).unwrap();
    let meta = w.finish(BASE, BASE + H2, None).unwrap();
    let dir = tmp.path().join(&meta.ulid);
    assert_eq!(verify(&dir).unwrap(), Vec::<String>::new());
    assert_eq!(meta.stats.num_series, 2);
    assert_eq!(
        Block::open(&dir)
            .unwrap()
            .select(&[], i64::MIN, i64::MAX, false)
            .unwrap()
            .len(),
        2
    );
    // A ULID is never reused.
    let again = ulid::Ulid::from_string(&meta.ulid).unwrap();
    assert!(matches!(
        BlockWriter::create(tmp.path(), again, syms),
        Err(BlockError::Exists(_))
    ));
}

#[test]
fn dropped_writer_leaves_only_a_tmp_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let mut input = vec![series(&[("__name__", "up")], &[(BASE, 1.0)])];
    let (done, _) = write(tmp.path(), &mut input, BASE, BASE + H2);
    let id = ulid::Ulid::new();
    {
        let mut w = BlockWriter::create(tmp.path(), id, symbols_of(&input)).unwrap();
        add(&mut w, &input[0]).unwrap();
    }
    let tmp_dir = tmp.path().join(format!("{id}.tmp-for-creation"));
    assert!(tmp_dir.is_dir());
    assert!(!tmp.path().join(id.to_string()).exists());
    assert_eq!(list_blocks(tmp.path()).unwrap(), vec![done.clone()]);
    std::fs::create_dir(
        tmp.path()
            .join(format!("{}.tmp-for-deletion", ulid::Ulid::new())),
    )
    .unwrap();
    std::fs::write(tmp.path().join("thanos.shipper.json.tmp"), b"{}").unwrap();
    assert_eq!(remove_tmp_dirs(tmp.path()).unwrap(), 2);
    assert!(!tmp_dir.exists());
    assert!(tmp.path().join("thanos.shipper.json.tmp").exists());
    assert_eq!(remove_tmp_dirs(tmp.path()).unwrap(), 0);
    assert_eq!(remove_tmp_dirs(&tmp.path().join("missing")).unwrap(), 0);
    assert!(Block::open(&done).is_ok());
}

#[test]
fn list_blocks_orders_by_min_time() {
    let tmp = tempfile::tempdir().unwrap();
    let mut later = vec![series(&[("__name__", "up")], &[(BASE + H2, 1.0)])];
    let mut earlier = vec![series(&[("__name__", "up")], &[(BASE, 1.0)])];
    let (b, _) = write(tmp.path(), &mut later, BASE + H2, BASE + 2 * H2);
    let (a, _) = write(tmp.path(), &mut earlier, BASE, BASE + H2);
    std::fs::create_dir(tmp.path().join("wal")).unwrap();
    std::fs::create_dir(tmp.path().join(ulid::Ulid::new().to_string())).unwrap(); // no meta.json: partial
    assert_eq!(list_blocks(tmp.path()).unwrap(), vec![a, b]);
}

#[test]
fn segments_roll_over_at_the_configured_size() {
    let tmp = tempfile::tempdir().unwrap();
    let mut input: Vec<TSeries> = (0..40)
        .map(|i| {
            let samples: Vec<(i64, f64)> = (0..500)
                .map(|j| (BASE + j * 1000 + i, (j * i) as f64 * 1.37))
                .collect();
            series(&[("__name__", "roll"), ("i", &format!("{i:03}"))], &samples)
        })
        .collect();
    sort_series(&mut input);
    let mut w = BlockWriter::create(tmp.path(), ulid::Ulid::new(), symbols_of(&input)).unwrap();
    w.set_segment_size(8192);
    for s in &input {
        add(&mut w, s).unwrap();
    }
    let meta = w.finish(BASE, BASE + H2, Some(thanos())).unwrap();
    let dir = tmp.path().join(&meta.ulid);
    let t = meta.thanos.as_ref().unwrap();
    assert!(t.segment_files.len() >= 5, "{:?}", t.segment_files);
    for (i, name) in t.segment_files.iter().enumerate() {
        assert_eq!(name, &format!("{:06}", i + 1));
        let size = std::fs::metadata(dir.join("chunks").join(name))
            .unwrap()
            .len();
        assert!(size <= 8192 && size > 8, "{name}: {size}");
    }
    assert_eq!(verify(&dir).unwrap(), Vec::<String>::new());
    let b = Block::open(&dir).unwrap();
    assert_eq!(
        actual(&b, &[], i64::MIN, i64::MAX),
        expected(&input, &[], i64::MIN, i64::MAX)
    );
}

#[test]
fn empty_block_is_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let w = BlockWriter::create(tmp.path(), ulid::Ulid::new(), Vec::<String>::new()).unwrap();
    let meta = w.finish(BASE, BASE + H2, Some(thanos())).unwrap();
    let dir = tmp.path().join(&meta.ulid);
    assert_eq!(verify(&dir).unwrap(), Vec::<String>::new());
    let b = Block::open(&dir).unwrap();
    assert!(b.select(&[], i64::MIN, i64::MAX, false).unwrap().is_empty());
    assert!(b.label_names(&[]).unwrap().is_empty());
}

/// A block with a few series and the offsets of its index sections.
fn sample_block(parent: &Path) -> (PathBuf, Vec<TSeries>) {
    let mut input = vec![
        series(
            &[("__name__", "a"), ("job", "x")],
            &(0..300)
                .map(|i| (BASE + i * 1000, i as f64))
                .collect::<Vec<_>>(),
        ),
        series(&[("__name__", "b"), ("job", "y")], &[(BASE + 5, 1.5)]),
        series(
            &[("__name__", "c")],
            &[(BASE + 7, -0.0), (BASE + 9, f64::NAN)],
        ),
    ];
    let (dir, _) = write(parent, &mut input, BASE, BASE + H2);
    (dir, input)
}

fn toc_of(index: &[u8]) -> index::Toc {
    index::Toc::decode(&index[index.len() - 52..], 0, Path::new("index")).unwrap()
}

fn flip(path: &Path, off: u64) {
    let mut b = std::fs::read(path).unwrap();
    b[off as usize] ^= 0x55;
    std::fs::write(path, b).unwrap();
}

fn assert_detected(dir: &Path, needle: &str) {
    let problems = verify(dir).unwrap();
    assert!(
        problems.iter().any(|p| p.contains(needle)),
        "want a problem containing {needle:?}, got {problems:#?}"
    );
}

#[test]
fn corrupted_bytes_are_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = sample_block(tmp.path());
    let index_path = dir.join("index");
    let pristine = std::fs::read(&index_path).unwrap();
    let toc = toc_of(&pristine);
    let restore = || std::fs::write(&index_path, &pristine).unwrap();

    // TOC checksum.
    flip(&index_path, pristine.len() as u64 - 1);
    assert!(matches!(Block::open(&dir), Err(BlockError::Corrupt { .. })));
    assert_detected(&dir, "TOC checksum");
    restore();

    // Symbol table body, postings offset table body.
    for (off, what) in [
        (toc.symbols + 9, "symbol table checksum"),
        (toc.postings_table + 9, "postings offset table checksum"),
    ] {
        flip(&index_path, off);
        assert!(
            matches!(Block::open(&dir), Err(BlockError::Corrupt { .. })),
            "{what}"
        );
        assert_detected(&dir, what);
        restore();
    }

    // A series entry: open still works (series are read lazily); reads and verify fail.
    let first_series = toc.series.div_ceil(16) * 16;
    flip(&index_path, first_series + 3);
    let b = Block::open(&dir).unwrap();
    assert!(matches!(
        b.select(&[], i64::MIN, i64::MAX, false),
        Err(BlockError::Corrupt { .. })
    ));
    assert_detected(&dir, "checksum mismatch");
    drop(b);
    restore();

    // A postings list.
    flip(&index_path, toc.postings + 9);
    let b = Block::open(&dir).unwrap();
    assert!(b.select(&[], i64::MIN, i64::MAX, false).is_err());
    assert_detected(&dir, "postings list checksum");
    drop(b);
    restore();

    // Chunk data.
    let seg = dir.join("chunks/000001");
    let chunks_pristine = std::fs::read(&seg).unwrap();
    flip(&seg, 20);
    let b = Block::open(&dir).unwrap();
    assert!(matches!(
        b.select(&[], i64::MIN, i64::MAX, false),
        Err(BlockError::Corrupt { .. })
    ));
    assert!(b.select(&[], i64::MIN, i64::MAX, true).is_ok());
    assert_detected(&dir, "chunk checksum mismatch");
    drop(b);
    std::fs::write(&seg, &chunks_pristine).unwrap();

    // Trailing garbage after the last chunk, and a wrong segment magic.
    let mut longer = chunks_pristine.clone();
    longer.extend_from_slice(&[0; 7]);
    std::fs::write(&seg, &longer).unwrap();
    assert_detected(&dir, "not referenced");
    flip(&seg, 0);
    assert!(Block::open(&dir).is_err());
    assert_detected(&dir, "magic");
    std::fs::write(&seg, &chunks_pristine).unwrap();

    // Stats that lie, and a truncated index.
    let meta_path = dir.join("meta.json");
    let text = std::fs::read_to_string(&meta_path).unwrap();
    std::fs::write(
        &meta_path,
        text.replace("\"numSeries\": 3", "\"numSeries\": 4"),
    )
    .unwrap();
    assert_detected(&dir, "stats.numSeries");
    std::fs::write(&meta_path, &text).unwrap();
    std::fs::write(&index_path, &pristine[..pristine.len() - 60]).unwrap();
    assert!(Block::open(&dir).is_err());
    assert!(!verify(&dir).unwrap().is_empty());
    restore();
    assert_eq!(verify(&dir).unwrap(), Vec::<String>::new());
    std::fs::remove_file(&index_path).unwrap();
    assert!(matches!(verify(&dir), Err(BlockError::Io { .. })));
}

/// Writes `input` in the given order with the writer's checks off, like a buggy writer would.
fn write_unchecked(parent: &Path, input: &[TSeries], mint: i64, maxt: i64) -> PathBuf {
    let mut w = BlockWriter::create(parent, ulid::Ulid::new(), symbols_of(input)).unwrap();
    w.set_unchecked();
    for s in input {
        add(&mut w, s).unwrap();
    }
    let meta = w.finish(mint, maxt, Some(thanos())).unwrap();
    parent.join(meta.ulid)
}

#[test]
fn verify_applies_the_thanos_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let a = series(&[("__name__", "a")], &[(BASE, 1.0), (BASE + 10, 2.0)]);
    let b = series(&[("__name__", "b")], &[(BASE, 1.0)]);
    let ok = write_unchecked(tmp.path(), &[a.clone(), b.clone()], BASE, BASE + H2);
    assert_eq!(verify(&ok).unwrap(), Vec::<String>::new());

    let dir = write_unchecked(tmp.path(), &[b.clone(), a.clone()], BASE, BASE + H2);
    assert_detected(&dir, "out of order; previous");
    let dir = write_unchecked(tmp.path(), &[a.clone(), a.clone()], BASE, BASE + H2);
    assert_detected(&dir, "out of order; previous");

    let mut unsorted = series(&[("job", "x"), ("__name__", "a")], &[(BASE, 1.0)]);
    let dir = write_unchecked(tmp.path(), std::slice::from_ref(&unsorted), BASE, BASE + H2);
    assert_detected(&dir, "OutOfOrderLabels");
    unsorted.labels.clear();
    let dir = write_unchecked(tmp.path(), std::slice::from_ref(&unsorted), BASE, BASE + H2);
    assert_detected(&dir, "empty label set");

    let mut no_chunks = a.clone();
    no_chunks.chunks.clear();
    let dir = write_unchecked(tmp.path(), &[no_chunks], BASE, BASE + H2);
    assert_detected(&dir, "empty chunks for series");

    let mut overlap = a.clone();
    overlap.chunks.push(overlap.chunks[0].clone());
    let dir = write_unchecked(tmp.path(), &[overlap], BASE, BASE + H2);
    assert_detected(&dir, "duplicates chunk 0");
    let mut overlap = series(
        &[("__name__", "a")],
        &(0..10).map(|i| (BASE + i, 1.0)).collect::<Vec<_>>(),
    );
    overlap
        .chunks
        .push(chunks_of(&[(BASE + 5, 1.0), (BASE + 20, 1.0)], 120).remove(0));
    let dir = write_unchecked(tmp.path(), &[overlap], BASE, BASE + H2);
    assert_detected(&dir, "OutOfOrderChunks");

    let dir = write_unchecked(tmp.path(), std::slice::from_ref(&a), BASE + 5, BASE + H2);
    assert_detected(&dir, "partly outside");
    let dir = write_unchecked(tmp.path(), std::slice::from_ref(&a), BASE + 100, BASE + H2);
    assert_detected(&dir, "completely outside");
    let dir = write_unchecked(tmp.path(), std::slice::from_ref(&a), BASE - H2, BASE);
    assert_detected(&dir, "issue 347");
    let dir = write_unchecked(tmp.path(), std::slice::from_ref(&a), BASE - H2, BASE + 10);
    assert_detected(&dir, "ending at maxTime");

    let mut lying = a.clone();
    lying.chunks[0].1 += 1;
    let dir = write_unchecked(tmp.path(), &[lying], BASE, BASE + H2);
    assert_detected(&dir, "but the index says");

    let empty_value = series(&[("__name__", "a"), ("job", "")], &[(BASE, 1.0)]);
    let dir = write_unchecked(tmp.path(), &[empty_value], BASE, BASE + H2);
    assert_detected(&dir, "empty label name or value");

    // A directory name that is not the meta's ULID.
    let renamed = tmp.path().join("renamed");
    std::fs::rename(&ok, &renamed).unwrap();
    assert_detected(&renamed, "differs from meta.json ulid");
}
